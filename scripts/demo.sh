#!/usr/bin/env bash
# The main job end to end on the embedded defaults. Everything it writes goes under $GOVRISK_WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
GOVRISK=.venv/bin/govrisk
WORK="${GOVRISK_WORK:-runs}"
DATA="$WORK/data/county-20000-s7"  # where the county_* experiments look for it

echo "== 1. Generate a synthetic county (20,000 applicants, seed 7)"
$GOVRISK data generate --applicants 20000 --seed 7 --out "$DATA" --overwrite
echo "== 2. Validate it against the record contract"
$GOVRISK data validate "$DATA"
echo "== 3. Describe it"
$GOVRISK data describe "$DATA"
echo "== 4. Import the real Taiwan credit-card data and validate it"
$GOVRISK data import taiwan data/real/taiwan/UCI_Credit_Card.csv --out "$WORK/data/taiwan" --overwrite
$GOVRISK data validate "$WORK/data/taiwan"
echo "== 5. Train the champion (WOE scorecard) and a challenger (temporal CNN) on the county"
$GOVRISK train --config county_scorecard
$GOVRISK train --config county_cnn
echo "== 6. The model registry"
$GOVRISK models list
echo "== 7. Tune the challenger briefly (Optuna: 4 trials of at most 2 epochs, a SQLite study in the work folder)"
$GOVRISK tune --model cnn --trials 4 --timeout 240 --threads 1 model.params.trainer.max_epochs=2
echo "== 8. Governance report: champion scorecard against challenger CNN, on the county's out-of-time rows"
REPORT="$WORK/reports/county-scorecard-vs-cnn"
$GOVRISK report --champion county-scorecard:latest --challenger county-cnn:latest --out "$REPORT"
echo "== 9. Serve the champion (county-scorecard:latest) beside the challenger (county-cnn:latest) on"
echo "   127.0.0.1:3000; a simulated decision system sends 5 applicants of a fresh county, then the server stops"
.venv/bin/python -m serving.decision_system --start-server --applicants 5
echo
echo "demo finished: datasets under $WORK/data, run folders under $WORK/runs, model store under $WORK/bentoml"
echo "governance report: $REPORT/report.html (figures: $REPORT/report.json); tuning study: $WORK/tuning/studies.db"

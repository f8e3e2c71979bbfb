#!/usr/bin/env bash
# The main job end to end on the embedded defaults. Everything it writes goes under $GOVRISK_WORK.
set -euo pipefail
cd "$(dirname "$0")/.."
GOVRISK=.venv/bin/govrisk
WORK="${GOVRISK_WORK:-runs}"
DATA="$WORK/data/county-20000-s7"  # where the county_* experiments look for it
# The applicant pseudonym key (the decision log stores HMAC-SHA256 of each applicant id under it): the
# demo's own, 32 random bytes written once to $WORK/secrets/applicant.key with mode 0600 (git-ignored).
# The server, `data outcomes` and `monitor live/book` read it through this variable; production sets
# GOVRISK_APPLICANT_KEY or GOVRISK_APPLICANT_KEY_FILE from a secrets manager instead.
if [ -z "${GOVRISK_APPLICANT_KEY:-}" ] && [ -z "${GOVRISK_APPLICANT_KEY_FILE:-}" ]; then
  GOVRISK_APPLICANT_KEY_FILE="$(GOVRISK_WORK="$WORK" .venv/bin/python -m govrisk.core.pseudonym)"
  export GOVRISK_APPLICANT_KEY_FILE
  echo "demo applicant pseudonym key: $GOVRISK_APPLICANT_KEY_FILE"
fi

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
echo "== 7. Tune the challenger briefly (Optuna: 4 trials of at most 2 epochs, a SQLite study in the work folder;"
echo "   the median pruner may stop trials 2 and 3 after their first epoch, once trials 0 and 1 are complete)"
$GOVRISK tune --model cnn --trials 4 --timeout 240 --threads 1 --pruner-startup-trials 2 model.params.trainer.max_epochs=2
echo "== 8. Governance report: champion scorecard against challenger CNN, on the county's out-of-time rows"
REPORT="$WORK/reports/county-scorecard-vs-cnn"
$GOVRISK report --champion county-scorecard:latest --challenger county-cnn:latest --out "$REPORT"
echo "== 9. Serve the champion (county-scorecard:latest) beside the challenger (county-cnn:latest) on"
echo "   127.0.0.1:3000; a simulated decision system sends 5 applicants of a fresh county, then a live county"
echo "   of 5,000 through /score_batch (shadow mode: both models score everyone), then the server stops"
LIVE_DATA="$WORK/data/live-county-5000-s12"
.venv/bin/python -m devtools.decision_system --start-server --applicants 5 --batch 5000 --batch-data "$LIVE_DATA"
echo "== 10. Live monitoring: play the live county 12 months forward, judge both models on what happened,"
echo "   and rescore the loans on the book as of 2024-01"
LOG="$WORK/serving/decisions.parquet"
$GOVRISK decisions export --out "$LOG"
$GOVRISK data outcomes "$LIVE_DATA" --log "$LOG" --out "$WORK/outcomes/live-county" --overwrite
LIVE_REPORT="$WORK/reports/live"
rc=0
$GOVRISK monitor live --log "$LOG" --outcomes "$WORK/outcomes/live-county" --out "$LIVE_REPORT" || rc=$?
echo "monitor live exit code $rc (0: no alert, 1: alerts listed above, 3: too few mature outcomes)"
[ "$rc" -ne 2 ] || exit 2
BOOK="$WORK/book/2024-01"
$GOVRISK monitor book --data "$LIVE_DATA" --outcomes "$WORK/outcomes/live-county" --log "$LOG" --as-of 2024-01 --out "$BOOK" --show 5
echo
echo "demo finished: datasets under $WORK/data, run folders under $WORK/runs, model store under $WORK/bentoml"
echo "governance report: $REPORT/report.html (figures: $REPORT/report.json); tuning study: $WORK/tuning/studies.db"
echo "live report: $LIVE_REPORT/report.html (figures and alerts: $LIVE_REPORT/report.json)"
echo "watch list: $BOOK/watchlist.parquet (every loan: $BOOK/book.parquet; figures: $BOOK/summary.json)"

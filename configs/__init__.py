"""The packaged default configs (YAML only): the last place the config search path looks."""

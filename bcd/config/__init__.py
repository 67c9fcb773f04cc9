"""The configs the commands compose: where the YAML files live and composing them (files), registering the typed
schemas they extend with Hydra (store: the schemas themselves live in bcd.data.spec, bcd.models.specs and beside
their builders, bcd.models.registry), the checks made before any data is read (checks), the commands' shared start
(entry) and the checks Hydra runs before it writes a run dir (preflight)."""

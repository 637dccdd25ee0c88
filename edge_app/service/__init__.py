"""`edge-app serve`: the background service (systemd, web view, JSON API, MQTT).

Seams, one job each: ``config`` (TOML schema and checks), ``notify`` (sd_notify),
``frames`` (one JPEG encoder shared by all viewers), ``web`` (HTTP server), ``metrics``
(Prometheus text), ``mqtt_out`` (MQTT state), ``eventlog`` (JSONL log), ``triggers``
(snapshots on a label) and ``service`` (wiring, signals, reload).
"""

"""The platform side: `edge-agent ingest` stores many gateways' MQTT traffic in PostgreSQL.

Installed with `pip install 'edge-agent[platform]'`; the gateway's own code never imports it
(the database driver is not a dependency of the agent). See docs/PLATFORM.md.
"""

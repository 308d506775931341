"""What the Grafana tests share (Grafana cannot run here, so the tests do what it would do):

- `sql`: Grafana's PostgreSQL query expansion (template variables, globals, macros) and the
  loaders of the provisioned files;
- `database`: running an expanded query as grafana_reader, and the frame shapes Grafana needs;
- `pipeline_runs`: the real pipeline filling a database (producer.py replays, live messages,
  consumer.py), the data generators and what it stored;
- `panels`: each panel's expected rows, computed offline from the published events and the
  consumer's metrics rows, and running every panel as a dashboard shows it;
- `alerts`: the alert rules evaluated as Grafana does (SQL, reduce, threshold, state);
- `fixtures`: the pytest fixtures built on them (registered in tests/conftest.py).
"""

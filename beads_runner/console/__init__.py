"""The operator's console: a web view of the runs of a repository (Now, Runs, a run, an issue,
Charts), a JSON API, `/metrics` for Prometheus, live updates over server-sent events, and the
actions of the command line (submit, retry, cancel). See docs/console.md.

- `app`: the Starlette application and serving it (`beads-runner ui`, `start --ui`);
- `api`: the JSON API and the actions; `sse`: the event stream; `pages`: the HTML pages;
- `data`: what they show, built from `status`, `explain`, `costs` and the run directories;
- `metrics`: the numbers of the Charts page and `/metrics`; `security`: the token rules.
"""

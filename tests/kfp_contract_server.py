"""A loopback stand-in for the KFP v2beta1 REST API that records every request.

There is no KFP backend on these machines: this serves the few endpoints the schedule command
uses, from an in-memory store, so tests can check the calls the real kfp SDK client makes
(a contract test, not a KFP deployment). Lists page like the API server: ``page_size``
(default 20 here), an opaque ``next_page_token`` while items remain, ``page_token`` to go on;
``filter`` (display_name EQUALS) is honoured unless ``honour_filters=False``.
"""
from __future__ import annotations

import base64
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

API = "/apis/v2beta1"


class LoopbackServer:
    """An HTTP server on a free loopback port (``self.port``), serving in a thread within
    ``with``; subclasses give the request handler class."""

    def __init__(self, handler):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self._server.server_address[1]

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()


class KfpContractServer(LoopbackServer):
    def __init__(self, honour_filters: bool = True):
        self.honour_filters = honour_filters
        self.requests: list[dict] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.experiments: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self._ids = (f"id-{n}" for n in itertools.count(1))
        super().__init__(self._handler())
        self.url = f"http://127.0.0.1:{self.port}"

    def calls(self) -> list[str]:
        """``METHOD path`` of each recorded request, health checks left out."""
        return [f"{r['method']} {r['path']}" for r in self.requests if "healthz" not in r["path"]]

    def _list(self, field, items, query):
        """One page of the items whose display_name equals a filter's EQUALS predicate (if
        there is one, and filters are honoured), and the token of the next page."""
        predicates = json.loads(query.get("filter", ["{}"])[0]).get("predicates", [])
        names = [p.get("stringValue", p.get("string_value")) for p in predicates
                 if p.get("key") in ("display_name", "name")] if self.honour_filters else []
        found = [i for i in items if not names or i["display_name"] in names]
        size = int(query.get("page_size", ["20"])[0])
        token = query.get("page_token", [""])[0]
        start = int(base64.urlsafe_b64decode(token).decode()) if token else 0
        page = {field: found[start:start + size], "total_size": len(found)}
        if start + size < len(found):
            page["next_page_token"] = base64.urlsafe_b64encode(
                str(start + size).encode()).decode()
        return page

    def _version(self, pipeline_id, name):
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": next(self._ids),
                   "display_name": name}
        self.versions.setdefault(pipeline_id, []).append(version)
        return version

    def _route(self, method, path, query, body):
        parts = path[len(API):].strip("/").split("/")
        if parts == ["healthz"]:
            return {"multi_user": False}
        if parts == ["pipelines"] and method == "GET":
            return self._list("pipelines", list(self.pipelines.values()), query)
        if parts == ["pipelines", "upload"]:
            pipeline = {"pipeline_id": next(self._ids), "display_name": query["name"][0]}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            self._version(pipeline["pipeline_id"], query["name"][0])
            return pipeline
        if parts == ["pipelines", "upload_version"]:
            return self._version(query["pipelineid"][0], query["name"][0])
        if parts[0] == "pipelines" and parts[2:] == ["versions"]:
            return self._list("pipeline_versions", self.versions.get(parts[1], []), query)
        if parts == ["experiments"] and method == "GET":
            return self._list("experiments", list(self.experiments.values()), query)
        if parts == ["experiments"] and method == "POST":
            experiment = dict(body, experiment_id=next(self._ids))
            self.experiments[experiment["experiment_id"]] = experiment
            return experiment
        if parts == ["recurringruns"] and method == "GET":
            found = [r for r in self.recurring_runs.values()
                     if r.get("experiment_id") == query.get("experiment_id", [None])[0]]
            return self._list("recurringRuns", found, query)
        if parts == ["recurringruns"] and method == "POST":
            run = dict(body, recurring_run_id=next(self._ids))
            self.recurring_runs[run["recurring_run_id"]] = run
            return run
        if parts == ["runs"] and method == "POST":
            run = dict(body, run_id=next(self._ids))
            self.runs[run["run_id"]] = run
            return run
        if parts[0] == "recurringruns" and method == "DELETE":
            del self.recurring_runs[parts[1]]
            return {}
        return None

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method):
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                is_json = "json" in (self.headers.get("Content-Type") or "")
                body = json.loads(raw) if raw and is_json else {}
                query = parse_qs(url.query)
                server.requests.append({"method": method, "path": url.path, "query": query,
                                        "body": body, "bytes": len(raw)})
                response = server._route(method, url.path, query, body)
                data = json.dumps(response if response is not None else
                                  {"error": f"no route {method} {url.path}"}).encode()
                self.send_response(200 if response is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_DELETE(self):
                self._serve("DELETE")

            def log_message(self, *args):
                pass

        return Handler

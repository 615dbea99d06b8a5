"""The ``:feedback`` handler: a client's true class for an answer it got, checked (a token
with the feedback scope, a request id a gateway signed, one of the answering version's
classes) and recorded once in the replicas' shared log (``serving.feedback.Answers``)."""
from __future__ import annotations

from starlette.requests import Request

from serving.feedback import FEEDBACK_SCOPE, Answers, BadFeedback, UnknownRequest
from serving.limits import Rejected, WorkerPool, json_object
from serving.metrics import Metrics
from serving.routing import Router

FEEDBACK_BODY = '{"request_id": ..., "class": ...}'


class FeedbackIntake:
    """Records feedback in ``answers`` (in a ``checks`` worker thread: it parses JSON and
    takes a file lock); ``router`` knows the classes of versions this gateway did not
    answer for."""

    def __init__(self, router: Router, answers: Answers, metrics: Metrics, checks: WorkerPool,
                 max_json_depth: int = 8):
        self.router, self.answers, self.metrics = router, answers, metrics
        self.checks, self.max_json_depth = checks, max_json_depth

    async def __call__(self, request: Request, body: bytes) -> dict:
        entry = await self.checks.run(self.record, body, request.state.claims,
                                      request.state.client)
        self.metrics.feedback.labels(entry["label"], str(entry["correct"]).lower()).inc()
        return {"request_id": entry["request_id"], "correct": entry["correct"]}

    def record(self, body: bytes, claims: dict | None, client: str) -> dict:
        """The recorded entry of a feedback ``body`` from ``client`` (``claims``: its token's,
        None without authentication); ``Rejected`` for feedback that cannot be taken."""
        if claims is not None and FEEDBACK_SCOPE not in str(claims.get("scope", "")).split():
            raise Rejected(403, "no_feedback_scope",  # before any work on the body
                           f"feedback needs a token with the {FEEDBACK_SCOPE!r} scope")
        value = json_object(body, FEEDBACK_BODY, self.max_json_depth)
        if not isinstance(value.get("request_id"), str) or not isinstance(value.get("class"),
                                                                          str):
            raise Rejected(400, "bad_request", 'expected {"request_id": "...", "class": "..."}')
        try:
            return self.answers.record(value["request_id"], value["class"], client,
                                       self.router.class_names)
        except UnknownRequest as err:
            raise Rejected(404, "unknown_request", err.args[0][:300]) from None
        except BadFeedback as err:
            raise Rejected(422, "unknown_class", str(err)[:300]) from None

"""The manager's side of log streams without a network: the query of ``…/logs``, the NDJSON it writes,
and the router's credit — acks as lines are written, frames beyond the window dropped, a session's end
ending its subscriptions."""

from __future__ import annotations

import json

import pytest

from api.logs import LogLine, LogOptions, LogsAck, LogsBatch, LogsCancel, LogsEnd, LogsSubscribe
from manager.api.app import BadRequest
from manager.api.logs import encode, log_options
from manager.logs import ACK_EVERY, Feed, FeedItem, LogRouter


class Sessions:
    """The dispatcher's side: sessions by node, and the frames sent on them."""

    def __init__(self, *nodes: str) -> None:
        self.ids = {n: f"session-of-{n}" for n in nodes}
        self.sent: list[tuple[str, object]] = []

    async def send(self, node_id: str, frame: object) -> bool:
        if node_id not in self.ids:
            return False
        self.sent.append((node_id, frame))
        return True

    def router(self) -> LogRouter:
        return LogRouter(self.send, lambda n: self.ids.get(n, ""), "m1")


@pytest.mark.parametrize(
    ("query", "options"),
    [
        ({}, LogOptions()),
        ({"follow": "1", "tail": "10"}, LogOptions(follow=True, tail=10)),
        ({"tail": "all", "follow": "false"}, LogOptions()),
        ({"tail": "-3"}, LogOptions()),
        ({"since": "1700000000.5"}, LogOptions(since_ns=1_700_000_000_500_000_000)),
        ({"since": "0"}, LogOptions()),
        ({"stdout": "1"}, LogOptions(stderr=False)),
        ({"stderr": "0"}, LogOptions(stderr=False)),
        ({"stdout": "0"}, LogOptions(stdout=False)),
        ({"stdout": "1", "stderr": "1", "timestamps": "1", "details": "1"}, LogOptions()),
    ],
)
def test_the_query_is_dockers(query: dict[str, str], options: LogOptions) -> None:
    assert log_options(query) == options


@pytest.mark.parametrize(
    ("query", "word"),
    [({"tail": "ten"}, "tail"), ({"stdout": "0", "stderr": "0"}, "stream"), ({"follow": "maybe"}, "follow")],
)
def test_a_bad_query_says_which_parameter(query: dict[str, str], word: str) -> None:
    with pytest.raises(BadRequest, match=word):
        log_options(query)


def test_lines_and_errors_are_one_json_object_per_line() -> None:
    item = FeedItem(None, "n1", "t1", (LogLine("stderr", 1_700_000_000_000_000_001, "ünï\tcode"),))
    (line,) = encode(item).splitlines()
    assert json.loads(line) == {
        "task": "t1",
        "node": "n1",
        "stream": "stderr",
        "time": "2023-11-14T22:13:20.000000001Z",
        "text": "ünï\tcode",
    }
    assert json.loads(encode(FeedItem(None, "n2", "t2", error="gone"))) == {
        "task": "t2",
        "node": "n2",
        "error": "gone",
    }
    assert encode(FeedItem(raw=b'{"x":1}\n')) == b'{"x":1}\n'


async def test_credit_returns_as_lines_are_written_and_excess_frames_are_dropped() -> None:
    sessions = Sessions("n1")
    router, feed = sessions.router(), Feed()
    sub = await router.subscribe(feed, "n1", ("t1",), LogOptions(follow=True))
    assert sub is not None
    ((node, frame),) = sessions.sent
    assert node == "n1" and isinstance(frame, LogsSubscribe) and frame.task_ids == ("t1",)

    for i in range(sub.window + 3):
        router.on_frame("n1", LogsBatch(sub.id, "t1", (LogLine(text=str(i)),)))
    router.on_frame("n2", LogsBatch(sub.id, "t1", (LogLine(text="other node"),)))  # not its subscription
    written = []
    for _ in range(sub.window):
        item = await feed.get()
        assert item is not None
        written += [line.text for line in item.lines]
        await sub.consumed()
    assert written == [str(i) for i in range(sub.window)]  # the agent's excess frames were never queued
    acks = [f for _, f in sessions.sent if isinstance(f, LogsAck)]
    assert sum(a.frames for a in acks) == sub.window and all(a.frames == ACK_EVERY for a in acks)

    router.on_frame("n1", LogsEnd(sub.id, "t1", "cannot read"))
    router.on_frame("n1", LogsEnd(sub.id))
    item = await feed.get()
    assert item is not None and item.error == "cannot read" and not item.final
    item = await feed.get()
    assert item is not None and item.final and not item.error
    assert await feed.get() is None and router.active == 0


async def test_a_closed_request_cancels_and_an_ended_session_ends() -> None:
    sessions = Sessions("n1", "n2")
    router, feed = sessions.router(), Feed()
    one = await router.subscribe(feed, "n1", ("t1",), LogOptions())
    two = await router.subscribe(feed, "n2", ("t2",), LogOptions())
    assert one is not None and two is not None
    assert await router.subscribe(Feed(), "n3", ("t3",), LogOptions()) is None  # no session here

    router.session_ended("n1", "an older session")  # a replaced session: not the one subscribed on
    assert router.active == 2
    router.session_ended("n1", "session-of-n1")
    item = await feed.get()
    assert item is not None and item.final and "session of node n1 ended" in item.error

    await feed.close()
    assert ("n2", LogsCancel(two.id)) in sessions.sent
    assert router.active == 0 and await feed.get() is None

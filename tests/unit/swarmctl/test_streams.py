"""Docker's multiplexed output stream, and image jobs' JSON-lines progress as it is shown."""

from __future__ import annotations

import io
from typing import Any

import pytest

from swarmctl.streams import Demuxer, Job, JobsDisplay, StreamError, copy_output, demux, human_size


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


STREAM = frame(1, b"hello\n") + frame(2, b"oops\n") + frame(1, b"") + frame(1, b"x" * 70000)
EXPECTED = [(1, b"hello\n"), (2, b"oops\n"), (1, b""), (1, b"x" * 70000)]


@pytest.mark.parametrize("size", [1, 3, 7, 8, 9, 100, 70000, len(STREAM)])
def test_frames_come_out_whole_however_the_bytes_arrive(size: int) -> None:
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert list(demux(chunks)) == EXPECTED


def test_a_partial_frame_waits_for_the_rest() -> None:
    d = Demuxer()
    assert d.feed(frame(1, b"abc")[:6]) == []
    assert d.feed(frame(1, b"abc")[6:] + frame(2, b"d")[:2]) == [(1, b"abc")]
    with pytest.raises(StreamError, match="cut inside a frame"):
        d.close()


@pytest.mark.parametrize("header", [b"\x05\0\0\0\0\0\0\x01x", b"\x01\0\x01\0\0\0\0\x01x", b"HTTP/1.1 200 OK"])
def test_a_malformed_header_is_an_error(header: bytes) -> None:
    with pytest.raises(StreamError, match="malformed"):
        list(demux([header]))


def test_output_goes_to_its_stream() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    copy_output([STREAM[:10], STREAM[10:]], out, err)
    assert out.getvalue() == b"hello\n" + b"x" * 70000
    assert err.getvalue() == b"oops\n"


def test_an_error_frame_ends_the_copy_with_its_message() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    with pytest.raises(StreamError, match="exec failed"):
        copy_output([frame(1, b"partial\n") + frame(3, b"exec failed\n")], out, err)
    assert out.getvalue() == b"partial\n"


def test_a_raw_stream_is_copied_as_it_is() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    copy_output([b"\x01\x02 raw"], out, err, multiplexed=False)
    assert out.getvalue() == b"\x01\x02 raw" and err.getvalue() == b""


# --- image jobs ---------------------------------------------------------------------------------------
PULL: list[dict[str, Any]] = [
    {"status": "Pulling from library/busybox", "id": "latest"},
    {"status": "Pulling fs layer", "id": "aaa"},
    {"status": "Pulling fs layer", "id": "bbb"},
    {"status": "Downloading", "id": "aaa", "progressDetail": {"current": 500, "total": 2000}},
    {"status": "Downloading", "id": "aaa", "progressDetail": {"current": 1000, "total": 2000}},
    {"status": "Already exists", "id": "bbb"},
]
PULL_END: list[dict[str, Any]] = [
    {"status": "Download complete", "id": "aaa"},
    {"status": "Pull complete", "id": "aaa"},
    {"status": "Digest: sha256:abc"},
    {"status": "Status: Downloaded newer image for busybox:latest"},
]


def test_a_pull_is_followed_layer_by_layer_and_byte_counts_are_not_lines() -> None:
    job = Job("node-1")
    lines = [line for obj in PULL for line in job.feed(obj)]
    assert lines == [
        "latest: Pulling from library/busybox",
        "aaa: Pulling fs layer",
        "bbb: Pulling fs layer",
        "aaa: Downloading",
        "bbb: Already exists",
    ]
    assert job.state == "running"
    assert job.summary() == "1/2 layers, 1kB/2kB (downloading)"
    assert job.fraction() == pytest.approx(1000 / 2000)
    for obj in PULL_END:
        job.feed(obj)
    job.finish()
    assert job.state == "done" and job.fraction() == 1.0
    assert job.result() == "Downloaded newer image for busybox:latest"
    assert job.summary() == job.result()


def test_an_error_line_fails_the_job() -> None:
    job = Job("node-2")
    job.feed(PULL[0])
    # Not a line of its own: the command's error line names every node that failed, and why.
    assert job.feed({"errorDetail": {"message": "manifest\nunknown"}, "error": "manifest\nunknown"}) == []
    job.finish()
    assert job.state == "failed" and job.result() == "failed: manifest unknown"


def test_load_lines_are_messages() -> None:
    job = Job("node-1")
    assert job.feed({"stream": "Loaded image: busybox:latest\n"}) == ["Loaded image: busybox:latest"]
    job.finish()
    assert job.messages == ["Loaded image: busybox:latest"] and job.result() == "Loaded image: busybox:latest"


def test_a_skipped_node_says_why() -> None:
    job = Job("sim")
    job.skip("node sim runs no containers")
    assert job.result() == "skipped: node sim runs no containers"


def test_plain_display_prints_one_line_per_change_with_the_node() -> None:
    stream = io.StringIO()
    jobs = [Job("node-1"), Job("node-2")]
    with JobsDisplay(stream, live=False) as display:
        for obj in PULL[:4]:
            display.show(jobs, jobs[0], jobs[0].feed(obj))
        display.show(
            jobs, jobs[1], jobs[1].feed({"status": "Status: Image is up to date for busybox:latest"})
        )
    assert stream.getvalue().splitlines() == [
        "node-1: latest: Pulling from library/busybox",
        "node-1: aaa: Pulling fs layer",
        "node-1: bbb: Pulling fs layer",
        "node-1: aaa: Downloading",
        "node-2: Status: Image is up to date for busybox:latest",
    ]


def test_live_display_draws_a_row_per_node() -> None:
    stream = io.StringIO()
    jobs = [Job("node-1"), Job("node-2")]
    with JobsDisplay(stream, live=True) as display:
        for obj in PULL:
            display.show(jobs, jobs[0], jobs[0].feed(obj))
        jobs[1].skip("runs no containers")
        display.show(jobs)
    text = stream.getvalue()
    assert "node-1" in text and "1/2 layers" in text and "skipped: runs no containers" in text


def test_quiet_display_prints_nothing() -> None:
    stream = io.StringIO()
    jobs = [Job("node-1")]
    with JobsDisplay(stream, quiet=True) as display:
        display.show(jobs, jobs[0], jobs[0].feed(PULL[0]))
    assert stream.getvalue() == ""


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0B"),
        (187, "187B"),
        (1234, "1.23kB"),
        (4_261_000, "4.26MB"),
        (1_000_000_000, "1GB"),
        (999, "999B"),
    ],
)
def test_sizes_as_docker_prints_them(n: int, text: str) -> None:
    assert human_size(n) == text

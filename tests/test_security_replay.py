"""Replay caches: in-process (threads, expiry, bound) and Redis (real server, shared across processes)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from jwks_server import SigningKey, jwks_of
from support import free_port

from cds_service.security import InProcessReplayCache, RedisReplayCache, ReplayCacheError
from cds_service.security.replay import replay_key

REPO_ROOT = Path(__file__).resolve().parent.parent
ISS = "https://ehr.example.org/fhir"


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------------------------------- in-process


def test_in_process_claims_each_jti_once() -> None:
    clock = FakeClock()
    cache = InProcessReplayCache(clock=clock)
    assert cache.claim("a", ISS, clock.now + 60) is True
    assert cache.claim("a", ISS, clock.now + 60) is False
    assert cache.claim("b", ISS, clock.now + 60) is True


def test_in_process_jti_is_scoped_to_the_issuer() -> None:
    clock = FakeClock()
    cache = InProcessReplayCache(clock=clock)
    assert cache.claim("a", ISS, clock.now + 60) is True
    assert cache.claim("a", "https://other.example.org", clock.now + 60) is True


def test_in_process_entries_expire() -> None:
    clock = FakeClock()
    cache = InProcessReplayCache(clock=clock)
    cache.claim("a", ISS, clock.now + 60)
    clock.now += 59
    assert cache.claim("a", ISS, clock.now + 60) is False
    clock.now += 1
    assert len(cache) == 0
    assert cache.claim("a", ISS, clock.now + 60) is True


def test_in_process_bound_fails_closed_and_recovers_after_expiry(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    cache = InProcessReplayCache(max_entries=3, clock=clock)
    for jti in ("a", "b", "c"):
        assert cache.claim(jti, ISS, clock.now + 10)
    with caplog.at_level(logging.ERROR, logger="cds_service.security"), pytest.raises(ReplayCacheError):
        cache.claim("d", ISS, clock.now + 10)
    assert "replay cache full" in caplog.text
    assert cache.claim("a", ISS, clock.now + 10) is False  # live entries were not evicted
    clock.now += 10
    assert cache.claim("d", ISS, clock.now + 10) is True


def test_in_process_is_thread_safe() -> None:
    cache = InProcessReplayCache()
    results: list[bool] = []
    results_lock = threading.Lock()
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        outcome = cache.claim("same", ISS, time.time() + 60)
        with results_lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 15 + [True]


def test_replay_key_is_fixed_length_and_issuer_specific() -> None:
    assert len(replay_key("x" * 10_000, ISS)) == 64
    assert replay_key("a", ISS) != replay_key("a", ISS + "/")


# ---------------------------------------------------------------------------------------------------- Redis


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix unique to this test run; its keys are deleted afterwards (no flush: other tests share the db)."""
    prefix = f"cds-test:{uuid.uuid4().hex}:jti:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def test_redis_claims_each_jti_once_with_an_expiry(redis_url: str, redis_prefix: str) -> None:
    clock = FakeClock(time.time())
    cache = RedisReplayCache(redis_url, key_prefix=redis_prefix, clock=clock)
    try:
        assert cache.claim("a", ISS, clock.now + 120) is True
        assert cache.claim("a", ISS, clock.now + 120) is False
        assert cache.claim("a", "https://other.example.org", clock.now + 120) is True
        probe = redis.Redis.from_url(redis_url)
        try:
            ttl = probe.ttl(redis_prefix + replay_key("a", ISS))
        finally:
            probe.close()
        assert 110 <= ttl <= 120  # SET NX EX: Redis forgets the jti when the token can no longer be valid
    finally:
        cache.close()


def test_redis_expired_tokens_still_get_a_positive_ttl(redis_url: str, redis_prefix: str) -> None:
    clock = FakeClock(time.time())
    cache = RedisReplayCache(redis_url, key_prefix=redis_prefix, clock=clock)
    try:
        assert cache.claim("late", ISS, clock.now - 5) is True  # EX must be >= 1, never 0 or negative
        assert cache.claim("late", ISS, clock.now - 5) is False
    finally:
        cache.close()


def test_redis_failure_fails_closed_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisReplayCache(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)
    with caplog.at_level(logging.ERROR, logger="cds_service.security"), pytest.raises(ReplayCacheError):
        cache.claim("a", ISS, time.time() + 60)
    assert "replay cache unavailable (ConnectionError); refusing the token" in caplog.text


# A separate Python process: builds its own authenticator with the Redis replay cache (as a server worker does),
# waits for a token on stdin, and prints whether it accepted it.
WORKER = r"""
import sys
from cds_service.errors import Unauthorized
from cds_service.security import build_authenticator

clients_path, redis_url, prefix, audience = sys.argv[1:5]
authenticator = build_authenticator(clients_path, redis_url, redis_key_prefix=prefix)
print("ready", flush=True)
token = sys.stdin.readline().strip()
try:
    client = authenticator.authenticate("Bearer " + token, audience)
except Unauthorized as refusal:
    print("refused:", refusal.reason, flush=True)
else:
    print("accepted:", client.iss, flush=True)
"""

AUDIENCE = "https://cds.example.org/cds-services/lumbar-imaging-order-sign"


@pytest.fixture(scope="module")
def client_key() -> SigningKey:
    return SigningKey("EC-P384", kid="replay-test")


@pytest.fixture
def clients_file(tmp_path: Path, client_key: SigningKey) -> str:
    path = tmp_path / "trusted-clients.json"
    path.write_text(json.dumps([{"iss": ISS, "jwks": jwks_of(client_key), "fhir_servers": []}]))
    return str(path)


def start_worker(clients_file: str, redis_url: str, prefix: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, clients_file, redis_url, prefix, AUDIENCE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    assert process.stdout is not None
    ready = process.stdout.readline()
    assert ready == "ready\n", process.stderr.read() if process.stderr else ready
    return process


def send_token(process: subprocess.Popen[str], token: str) -> None:
    assert process.stdin is not None
    process.stdin.write(token + "\n")
    process.stdin.close()


def outcome(process: subprocess.Popen[str]) -> str:
    """The worker's verdict line (its stdin is already closed, so communicate() cannot be used)."""
    assert process.stdout is not None and process.stderr is not None
    try:
        process.wait(timeout=30)
        stdout, stderr = process.stdout.read(), process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    assert process.returncode == 0, stderr
    return stdout.strip()


def fresh_token(key: SigningKey) -> str:
    now = int(time.time())
    return key.sign({"iss": ISS, "aud": AUDIENCE, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}, "ES384")


@pytest.mark.integration
def test_redis_replay_is_shared_across_processes(
    redis_url: str, redis_prefix: str, clients_file: str, client_key: SigningKey
) -> None:
    token = fresh_token(client_key)
    first = start_worker(clients_file, redis_url, redis_prefix)
    send_token(first, token)
    assert outcome(first) == f"accepted: {ISS}"

    second = start_worker(clients_file, redis_url, redis_prefix)
    send_token(second, token)
    assert outcome(second) == f"refused: replayed jti (iss={ISS})"


@pytest.mark.integration
def test_redis_replay_race_between_processes_accepts_exactly_once(
    redis_url: str, redis_prefix: str, clients_file: str, client_key: SigningKey
) -> None:
    token = fresh_token(client_key)
    workers = [start_worker(clients_file, redis_url, redis_prefix) for _ in range(4)]
    for worker in workers:  # all are ready and waiting; release them as close together as possible
        send_token(worker, token)
    outcomes = sorted(outcome(worker) for worker in workers)
    assert outcomes == [f"accepted: {ISS}"] + [f"refused: replayed jti (iss={ISS})"] * 3


@pytest.mark.integration
def test_in_process_cache_is_not_shared_across_processes(clients_file: str, client_key: SigningKey) -> None:
    # The control for the test above: without CDS_REDIS_URL each process remembers only its own tokens.
    token = fresh_token(client_key)
    for _ in range(2):
        worker = start_worker(clients_file, "", "unused:")
        send_token(worker, token)
        assert outcome(worker) == f"accepted: {ISS}"

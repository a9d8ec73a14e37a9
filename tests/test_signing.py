"""Signed payloads: with a secret, workers and clients never unpickle a payload without a valid HMAC."""

from __future__ import annotations

import hmac
import math
import os
import pickle
import subprocess
import sys
import uuid

import conftest
import dask
import funcs
import msgpack
import pytest
from conftest import wait_until

from rush_dask import PayloadSignatureError, Rush, RushWorker
from rush_dask.core import constants as C
from rush_dask.core.scripts import NewTask
from rush_dask.core.serialize import dumps, loads, mac, place, sign

SECRET = "correct horse battery staple"


@pytest.fixture
def signed(redis_url):
    yield from conftest.fresh_network(redis_url, secret=SECRET)


def forged(marker):
    return pickle.dumps(funcs.MarkerPayload(marker), protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.parametrize("secret", [b"k", b"x" * 64, b"y" * 65, bytes(range(256)) * 3])
@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 100_000])
def test_mac_is_hmac_sha256(secret, size):
    data = bytes(i % 251 for i in range(size))
    assert mac(secret, data) == hmac.digest(secret, data, "sha256")
    assert mac(secret, memoryview(data)) == hmac.digest(secret, data, "sha256")


def test_signed_payloads_round_trip_and_refuse_tampering():
    key = b"k"
    blob = dumps({"x": 1}, key)
    assert loads(blob, key) == {"x": 1}
    with pytest.raises(PayloadSignatureError, match="signature invalid"):
        loads(blob[:-1] + bytes([blob[-1] ^ 1]), key)
    with pytest.raises(PayloadSignatureError, match="signature invalid"):
        loads(dumps({"x": 1}, b"other"), key)
    with pytest.raises(PayloadSignatureError, match="signature missing"):
        loads(dumps({"x": 1}), key)
    with pytest.raises(PayloadSignatureError, match="set the RUSH_SECRET"):
        loads(blob)


def test_signed_tasks_run_normally(signed):
    signed.start_workers(funcs.with_constants, n_workers=2, scale=10)
    keys = signed.push_tasks([{"x": i} for i in range(20)], extra=[{"tag": i} for i in range(20)])
    signed.wait_for_tasks(keys, timeout=60)
    data = signed.fetch_finished_tasks()
    assert sorted(data.y) == [10 * i for i in range(20)]
    assert sorted(data.tag) == list(range(20))
    # What is in Redis is signed: a reader without the secret is refused, not fooled.
    xs = signed.client.hget(signed.keys.task(keys[0]), "xs")
    with pytest.raises(PayloadSignatureError, match="has no secret"):
        loads(xs)


def test_forged_task_never_runs(signed, tmp_path):
    marker = tmp_path / "pwned"
    signed.start_workers(funcs.add, n_workers=1)
    signed.wait_for_workers(1, timeout=60)
    good = signed.push_tasks([{"x1": 1, "x2": 2}, {"x1": 3, "x2": 4}])
    # An attacker with write access to Redis pushes a task of its own (a plain pickle),
    # with the same script a controller uses.
    forged_key = "forged-" + uuid.uuid4().hex[:8]
    signed.scripts.push([NewTask(forged_key, forged(marker))], max_lost=3)
    signed.wait_for_tasks([*good, forged_key], timeout=60)
    assert not marker.exists()
    failed = signed.fetch_failed_tasks()
    assert list(failed["keys"]) == [forged_key]
    assert "signature missing" in failed.error.iloc[0] or "signature invalid" in failed.error.iloc[0]
    wait_until(
        lambda: any(forged_key in m and "refused" in m for m in signed.read_log().message),
        30,
        "refusal in the worker log",
    )
    assert set(signed.fetch_finished_tasks()["keys"]) == set(good)
    stderr = next(iter(signed.local_workers)).stderr_path.read_text()
    assert forged_key in stderr and "not unpickled" in stderr


def test_forged_function_blob_never_runs(signed, tmp_path):
    marker = tmp_path / "pwned"
    signed.start_workers(funcs.add, n_workers=1)
    keys = signed.push_tasks([{"x": 1}], fun=funcs.square)
    signed.wait_for_tasks(keys, timeout=60)
    assert signed.fetch_finished_tasks().y.tolist() == [1]
    # Overwrite the stored function; a fresh worker (no cached copy) runs the next task.
    fun_id = signed.client.hget(signed.keys.task(keys[0]), "fun").decode()
    signed.stop_workers("kill")
    signed.client.set(signed.keys.function(fun_id), forged(marker))
    (forged_key,) = signed.push_tasks([{"x": 2}], fun=funcs.square)  # same function, same id
    assert signed.client.hget(signed.keys.task(forged_key), "fun").decode() == fun_id
    signed.start_workers(funcs.add, n_workers=1)
    signed.wait_for_tasks([forged_key], timeout=60)
    assert not marker.exists()
    error = signed.fetch_failed_tasks().error.tolist()
    assert len(error) == 1 and "PayloadSignatureError: payload signature missing" in error[0]
    wait_until(
        lambda: any(forged_key in m and "refused" in m for m in signed.read_log().message),
        30,
        "refusal in the worker log",
    )


def test_worker_with_the_wrong_secret_refuses_tasks(signed, redis_url, tmp_path):
    marker = tmp_path / "ran"
    keys = signed.push_tasks([{"path": str(marker)}], fun=funcs.touch)
    # A worker process started with another secret refuses the configuration and exits.
    start_id = signed.worker_script(funcs.add).split("--start-id ")[1]
    env = dict(os.environ, RUSH_REDIS_URL=redis_url, RUSH_SECRET="wrong")
    proc = subprocess.run(
        [sys.executable, "-m", "rush_dask.core.worker", "--network", signed.network_id, "--start-id", start_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "signature invalid" in proc.stderr and "Traceback" not in proc.stderr
    # A worker without any secret says what to set.
    env.pop("RUSH_SECRET")
    proc = subprocess.run(
        [sys.executable, "-m", "rush_dask.core.worker", "--network", signed.network_id, "--start-id", start_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0 and "RUSH_SECRET" in proc.stderr
    assert signed.n_queued_tasks == 1
    # A worker that takes part directly with the wrong secret fails the task without unpickling it.
    worker = RushWorker(signed.network_id, url=redis_url, secret="wrong")
    try:
        task = worker.pop_task(timeout=5)
        outcome, text, _, _ = worker.execute(task)
        worker.fail_tasks([task.key], [text])
    finally:
        worker.close()
    assert outcome == "error" and "signature invalid" in text
    assert not marker.exists()
    assert signed.fetch_failed_tasks()["keys"].tolist() == keys


def test_signed_client_leaves_unsigned_rows_out_of_tables(rush, redis_url, caplog):
    rush.start_workers(funcs.add, n_workers=1)
    keys = rush.push_tasks([{"x1": 1, "x2": 1}])
    rush.wait_for_tasks(keys, timeout=60)
    assert rush.fetch_finished_tasks().y.tolist() == [2]
    reader = Rush(rush.network_id, url=redis_url, secret=SECRET)
    data = reader.fetch_finished_tasks()
    assert "y" not in data.columns and "x1" not in data.columns and data["keys"].tolist() == keys
    assert any(keys[0] in r.message and "signature missing" in r.message for r in caplog.records)


def test_dask_graph_with_a_secret(signed):
    signed.start_workers(n_workers=2)
    a = dask.delayed(sum)([1, 2, 3])
    b = dask.delayed(lambda v: v * 2)(a)
    assert dask.compute(b, scheduler=signed)[0] == 12
    failing = dask.delayed(lambda v: 1 / v)(0)
    with pytest.raises(ZeroDivisionError):
        dask.compute(failing, scheduler=signed)


def test_graph_result_forged_in_redis_is_refused_by_the_client(signed):
    signed.start_workers(n_workers=1)
    future = signed.submit(sum, [1, 2])
    assert future.result(timeout=60) == 3
    signed.client.hset(signed.keys.task(future.task_key), "ys", sign(pickle.dumps(7), b"wrong"))
    with pytest.raises(PayloadSignatureError, match="signature invalid"):
        future.result(timeout=60)
    future.release()


def test_bad_secret_is_a_clear_error(redis_url):
    with pytest.raises(ValueError, match="secret must be a non-empty"):
        Rush(url=redis_url, secret=b"")
    with pytest.raises(ValueError, match="secret must be a non-empty"):
        Rush(url=redis_url, secret=42)


# ------------------------------------------------- signatures bound to their place
def test_signature_is_bound_to_its_place():
    key = b"k"
    here, there = place("rush:{a}:", "t1", "xs"), place("rush:{a}:", "t2", "xs")
    blob = dumps({"x": 1}, key, here)
    assert loads(blob, key, here) == {"x": 1}
    for elsewhere in (there, place("rush:{a}:", "t1", "extra"), place("rush:{b}:", "t1", "xs"), b""):
        with pytest.raises(PayloadSignatureError, match="moved here from another task, field or network"):
            loads(blob, key, elsewhere)


def test_payload_of_the_old_format_is_refused():
    old = b"RSIG1" + mac(b"k", b"\x80") + pickle.dumps(1)
    with pytest.raises(PayloadSignatureError, match="older rush_dask"):
        loads(old, b"k")


def _marked_task(rush, marker):
    """A legitimately signed task whose inputs leave ``marker`` when unpickled; failed before it runs."""
    (key,) = rush.push_tasks([{"m": funcs.MarkerPayload(marker)}])
    assert not marker.exists()  # pushing pickles the payload, it does not unpickle it
    rush.empty_queue()  # failed while queued: no worker ever unpickles it legitimately
    return rush.client.hget(rush.keys.task(key), "xs")


def test_inputs_copied_to_another_task_are_refused(signed, tmp_path):
    marker = tmp_path / "pwned"
    signed_xs = _marked_task(signed, marker)
    (victim,) = signed.push_tasks([{"x1": 1, "x2": 2}])
    signed.client.hset(signed.keys.task(victim), "xs", signed_xs)  # a Redis writer replays it
    signed.start_workers(funcs.add, n_workers=1)
    signed.wait_for_tasks([victim], timeout=60)
    assert not marker.exists()
    # Read without the tables: they would rightly unpickle the marked task's own inputs.
    error = signed.client.hget(signed.keys.task(victim), "error").decode()
    assert "PayloadSignatureError" in error and "moved here from another task" in error
    wait_until(
        lambda: any(victim in m and "refused" in m for m in signed.read_log().message), 30, "refusal in the worker log"
    )


def test_inputs_signed_for_another_network_are_refused(signed, tmp_path):
    marker = tmp_path / "pwned"
    (victim,) = signed.push_tasks([{"x1": 1, "x2": 2}])
    # What another network with the same secret stores for a task of the same key: only the
    # network differs.
    other = C.Keys(f"other-{uuid.uuid4().hex[:8]}")
    payload = dumps({"m": funcs.MarkerPayload(marker)}, SECRET.encode(), place(other.prefix, victim, "xs"))
    assert loads(payload, SECRET.encode(), place(other.prefix, victim, "xs")) and marker.exists()
    marker.unlink()  # the payload is genuine for the other network: unpickling it leaves the marker
    signed.client.hset(signed.keys.task(victim), "xs", payload)
    signed.start_workers(funcs.add, n_workers=1)
    signed.wait_for_tasks([victim], timeout=60)
    error = signed.fetch_failed_tasks().set_index("keys").error[victim]
    assert "moved here from another task, field or network" in error
    assert not marker.exists()


def test_a_result_copied_to_another_task_is_refused_by_the_client(signed):
    signed.start_workers(n_workers=1)
    three, seven = signed.submit(sum, [1, 2]), signed.submit(sum, [3, 4])
    assert three.result(timeout=60) == 3 and seven.result(timeout=60) == 7
    ys = signed.client.hget(signed.keys.task(three.task_key), "ys")
    signed.client.hset(signed.keys.task(seven.task_key), "ys", ys)
    with pytest.raises(PayloadSignatureError, match="moved here from another task"):
        seven.result(timeout=60)
    three.release()
    seven.release()


def test_a_rush_result_copied_to_another_row_is_refused(signed, caplog):
    signed.start_workers(funcs.add, n_workers=1)
    keys = signed.push_tasks([{"x1": 1, "x2": 1}, {"x1": 5, "x2": 5}])
    signed.wait_for_tasks(keys, timeout=60)
    # Rows are packed by Lua's cmsgpack: strings are raw bytes.
    rows = [msgpack.unpackb(r, raw=True) for r in signed.client.lrange(signed.keys.archive, 0, -1)]
    first = next(i for i, r in enumerate(rows) if r[0] == keys[0].encode())
    second = 1 - first
    rows[second][2] = rows[first][2]  # the row of the second task now holds the first one's output
    signed.client.lset(signed.keys.archive, second, msgpack.packb(rows[second], use_bin_type=False))
    reader = Rush(signed.network_id, url=signed.url, secret=SECRET)
    data = reader.fetch_finished_tasks().set_index("keys")
    reader.close()
    assert data.y[keys[0]] == 2 and math.isnan(data.y[keys[1]])
    assert any(keys[1] in r.message and "moved here" in r.message for r in caplog.records)

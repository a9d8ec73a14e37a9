"""An Optuna storage kept directly in Redis structures: :class:`RedisStorage`.

Optuna's ``JournalStorage`` makes every process replay every other
process's log entries; with 8 processes each operation is applied 8 times.
Here each trial is a Redis hash and each study a few indexes, so a process
reads only what it asks for:

* ``<p>t:<trial_id>``: hash of one trial: ``sid``, ``n`` (number), ``st``
  (state), ``v`` (values, JSON), ``ds``/``dc`` (start/complete, ISO),
  ``p:<name>`` (internal value), ``d:<name>`` (distribution, JSON),
  ``i:<step>`` (intermediate value), ``u:<key>``/``s:<key>`` (user/system
  attributes, JSON).
* ``<p>s:<study_id>``: hash ``name``, ``directions``; ``...:user`` and
  ``...:system`` (study attributes), ``...:trials`` (list of trial ids by
  number), ``...:finished`` (append-only list of finished trial ids, in the
  order they finished), ``...:active`` (set of RUNNING and WAITING ids),
  ``...:waiting`` (sorted set of WAITING ids, by id), ``...:dists`` (first
  distribution of each parameter name, for the compatibility check).
* ``<p>studies`` (name → id), ``<p>names`` (id → name), ``<p>ids``
  (counters).

``<p>`` is the network's prefix plus ``optuna-store:``, so every key of a
network is in one Redis Cluster slot and ``rush.reset()`` deletes them.

Finished trials cannot change, so each storage object caches them and a
``get_all_trials`` reads only the ids appended to ``...:finished`` since its
last read, plus the few active trials, in one round trip. Creating a trial,
changing its state and every write to it are one Lua script each, which
refuses (``UpdateFinishedTrialError``) to touch a finished trial; moving a
trial to RUNNING succeeds only from WAITING, so an enqueued trial is taken
by exactly one process.

Two shortcuts, each equivalent to an earlier read: ``get_trial`` right
after this object created the trial answers from what it wrote (no round
trip), and the WAITING lookup of ``study.ask()`` answers "none" without a
round trip when the last reply of Redis for that study, less than
``max_staleness`` seconds ago (default 5 ms), said no trial was WAITING.

>>> store = RedisStorage(redis_url, "rush:{doctest-store}:optuna-store:")
>>> study = optuna.create_study(storage=store, study_name="quad")
>>> study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=3)
>>> len(optuna.load_study(study_name="quad", storage=store).trials)
3
>>> store.clear() > 0
True
"""

from __future__ import annotations

import bisect
import copy
import json
import operator
import threading
import time
import uuid
from collections.abc import Container, Sequence
from datetime import datetime
from typing import Any, cast

import optuna
from optuna.distributions import (
    BaseDistribution,
    check_distribution_compatibility,
    distribution_to_json,
    json_to_distribution,
)
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.storages._base import DEFAULT_STUDY_NAME_PREFIX
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState

from .core.connections import connect, is_cluster_url

__all__ = ["RedisStorage"]

_STATES = {s.value: s for s in TrialState}
_FINISHED = frozenset(s for s in TrialState if s.is_finished())

# Every script gets KEYS[1] = <p>ids (so that a Redis Cluster routes it to the network's slot)
# and ARGV[1] = <p>; the other keys are built from the prefix, all in the same slot.
# Codes: -1 no such trial/study, -2 the trial is finished (then its number), -3 conflicting distribution.
_FINISHED_LUA = "local function finished(st) return st == 1 or st == 2 or st == 3 end\n"

# ARGV: p, name, directions JSON. Reply: study id, or -1 if the name is taken.
_CREATE_STUDY = """
local p, name = ARGV[1], ARGV[2]
if redis.call('HEXISTS', p .. 'studies', name) == 1 then return -1 end
local sid = redis.call('HINCRBY', KEYS[1], 'study', 1) - 1
redis.call('HSET', p .. 'studies', name, sid)
redis.call('HSET', p .. 'names', sid, name)
redis.call('HSET', p .. 's:' .. sid, 'name', name, 'directions', ARGV[3])
return sid
"""

# ARGV: p, study id. Reply: 0, or -1 if there is no such study.
_DELETE_STUDY = """
local p, sid = ARGV[1], ARGV[2]
local s = p .. 's:' .. sid
local name = redis.call('HGET', s, 'name')
if not name then return -1 end
for _, tid in ipairs(redis.call('LRANGE', s .. ':trials', 0, -1)) do redis.call('DEL', p .. 't:' .. tid) end
redis.call('DEL', s, s .. ':user', s .. ':system', s .. ':trials', s .. ':finished', s .. ':active',
           s .. ':waiting', s .. ':dists')
redis.call('HDEL', p .. 'studies', name)
redis.call('HDEL', p .. 'names', sid)
return 0
"""

# ARGV: p, study id, 'user'|'system', field, JSON value. Reply: 0, or -1 if there is no such study.
_SET_STUDY_ATTR = """
local s = ARGV[1] .. 's:' .. ARGV[2]
if redis.call('EXISTS', s) == 0 then return -1 end
redis.call('HSET', s .. ':' .. ARGV[3], ARGV[4], ARGV[5])
return 0
"""

# ARGV: p, study id, state, now, n, then n (name, distribution JSON), then the trial's other fields.
# Reply: {trial id, number, waiting count}, or {-1} if there is no such study.
_CREATE_TRIAL = (
    _FINISHED_LUA
    + """
local p, sid, state = ARGV[1], ARGV[2], tonumber(ARGV[3])
local s = p .. 's:' .. sid
if redis.call('EXISTS', s) == 0 then return {-1} end
local tid = redis.call('HINCRBY', KEYS[1], 'trial', 1) - 1
local number = redis.call('RPUSH', s .. ':trials', tid) - 1
local nd = tonumber(ARGV[5])
for i = 0, nd - 1 do redis.call('HSETNX', s .. ':dists', ARGV[6 + 2 * i], ARGV[7 + 2 * i]) end
redis.call('HSET', p .. 't:' .. tid, 'sid', sid, 'n', number, 'st', state, unpack(ARGV, 6 + 2 * nd))
if finished(state) then
  redis.call('RPUSH', s .. ':finished', tid)
else
  redis.call('SADD', s .. ':active', tid)
  if state == 4 then redis.call('ZADD', s .. ':waiting', tid, tid) end
end
return {tid, number, redis.call('ZCARD', s .. ':waiting')}
"""
)

# ARGV: p, trial id, new state, values JSON or '', now.
# Reply: {1, waiting count, study id[, the trial's fields if it finished]} (changed), {0, waiting count,
# study id} (RUNNING asked for a trial that is not WAITING: another process has it), {-1} or {-2, number}.
_SET_STATE = (
    _FINISHED_LUA
    + """
local p, tid, new = ARGV[1], ARGV[2], tonumber(ARGV[3])
local t = p .. 't:' .. tid
local cur = redis.call('HMGET', t, 'st', 'sid', 'n')
if not cur[1] then return {-1} end
local st = tonumber(cur[1])
if finished(st) then return {-2, tonumber(cur[3])} end
local s = p .. 's:' .. cur[2]
local sid = tonumber(cur[2])
if new == 0 and st ~= 4 then return {0, redis.call('ZCARD', s .. ':waiting'), sid} end
redis.call('HSET', t, 'st', new)
if ARGV[4] ~= '' then redis.call('HSET', t, 'v', ARGV[4]) end
if new == 4 then
  redis.call('ZADD', s .. ':waiting', tid, tid)
  return {1, redis.call('ZCARD', s .. ':waiting'), sid}
end
redis.call('ZREM', s .. ':waiting', tid)
if new == 0 then
  redis.call('HSET', t, 'ds', ARGV[5])
  return {1, redis.call('ZCARD', s .. ':waiting'), sid}
end
redis.call('HSET', t, 'dc', ARGV[5])
redis.call('SREM', s .. ':active', tid)
redis.call('RPUSH', s .. ':finished', tid)
return {1, redis.call('ZCARD', s .. ':waiting'), sid, redis.call('HGETALL', t)}
"""
)

# ARGV: p, trial id, parameter name or '', distribution JSON, '1' to accept a different (compatible)
# distribution, then field/value pairs. Reply: {0}, {-1}, {-2, number} or {-3, the study's distribution}.
_SET_FIELDS = (
    _FINISHED_LUA
    + """
local p = ARGV[1]
local t = p .. 't:' .. ARGV[2]
local cur = redis.call('HMGET', t, 'st', 'sid', 'n')
if not cur[1] then return {-1} end
if finished(tonumber(cur[1])) then return {-2, tonumber(cur[3])} end
if ARGV[3] ~= '' then
  local dists = p .. 's:' .. cur[2] .. ':dists'
  local old = redis.call('HGET', dists, ARGV[3])
  if not old then redis.call('HSET', dists, ARGV[3], ARGV[4])
  elseif old ~= ARGV[4] and ARGV[5] ~= '1' then return {-3, old} end
end
redis.call('HSET', t, unpack(ARGV, 6))
return {0}
"""
)

# ARGV: p, study id, finished read so far, mode ('all', 'finished' or 'waiting').
# Reply: {-1} (no such study) or {0, new finished ids, their fields, active ids, their fields, waiting count}.
_SYNC = """
local p, mode = ARGV[1], ARGV[4]
local s = p .. 's:' .. ARGV[2]
if redis.call('EXISTS', s) == 0 then return {-1} end
local done, done_fields, active, active_fields = {}, {}, {}, {}
if mode ~= 'waiting' then
  done = redis.call('LRANGE', s .. ':finished', ARGV[3], -1)
  for i, tid in ipairs(done) do done_fields[i] = redis.call('HGETALL', p .. 't:' .. tid) end
end
if mode == 'all' then active = redis.call('SMEMBERS', s .. ':active')
elseif mode == 'waiting' then active = redis.call('ZRANGE', s .. ':waiting', 0, -1) end
for i, tid in ipairs(active) do active_fields[i] = redis.call('HGETALL', p .. 't:' .. tid) end
return {0, done, done_fields, active, active_fields, redis.call('ZCARD', s .. ':waiting')}
"""


class _StudyCache:
    """What one storage object knows of a study's finished trials (they never change)."""

    __slots__ = ("read", "trials", "numbers", "waiting", "waiting_at")

    def __init__(self) -> None:
        self.read = 0  # entries of the study's finished list read so far
        self.trials: list[FrozenTrial] = []  # finished trials, by number
        self.numbers: list[int] = []  # their numbers (for bisect)
        self.waiting = -1  # WAITING trials in Redis's last reply about the study (-1: unknown) ...
        self.waiting_at = float("-inf")  # ... and when (time.monotonic())

    def add(self, trial: FrozenTrial) -> None:
        number = trial.number
        if not self.numbers or number > self.numbers[-1]:
            self.numbers.append(number)
            self.trials.append(trial)
        else:
            i = bisect.bisect_left(self.numbers, number)
            self.numbers.insert(i, number)
            self.trials.insert(i, trial)


class RedisStorage(BaseStorage):
    """An Optuna storage in Redis hashes, lists and sets under ``prefix`` (see the module).

    ``url``: the Redis URL; ``prefix``: the start of every key (the network's
    prefix ``rush:{NET}:`` plus a name); ``max_staleness``: seconds during
    which an empty WAITING set in Redis's last reply is trusted. Picklable
    (it reconnects from the URL), so a study on it travels to worker
    processes. Thread-safe.

    >>> store = RedisStorage(redis_url, "rush:{doctest-store}:optuna-store:")
    >>> sid = store.create_new_study([optuna.study.StudyDirection.MINIMIZE], "s")
    >>> store.get_study_name_from_id(sid)
    's'
    >>> store.clear()  # ids, studies, names, s:0
    4
    """

    def __init__(self, url: str, prefix: str, max_staleness: float = 0.005):
        self._url = url
        self._prefix = prefix
        self._max_staleness = max_staleness
        # One connection held (not one checked out of a pool per command: about 35 us less a call),
        # behind redis-py's lock; a cluster client keeps its own connections.
        single = {} if is_cluster_url(url) else {"single_connection_client": True}
        self._client = connect(url, retry_timeout=60, **single)
        self._ids_key = prefix + "ids"
        scripts = {
            name: self._client.register_script(source)
            for name, source in (
                ("create_study", _CREATE_STUDY),
                ("delete_study", _DELETE_STUDY),
                ("set_study_attr", _SET_STUDY_ATTR),
                ("create_trial", _CREATE_TRIAL),
                ("set_state", _SET_STATE),
                ("set_fields", _SET_FIELDS),
                ("sync", _SYNC),
            )
        }
        self._scripts = scripts
        self._lock = threading.Lock()
        self._studies: dict[int, _StudyCache] = {}
        self._finished: dict[int, FrozenTrial] = {}  # trial id -> finished trial
        self._directions: dict[int, list[StudyDirection]] = {}
        self._dists: dict[bytes, BaseDistribution] = {}  # distribution JSON -> distribution
        # RUNNING trials this object created or took from WAITING, as its own writes left them
        # (None: taken from WAITING, not read yet)
        self._owned: dict[int, FrozenTrial | None] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self._url, "prefix": self._prefix, "max_staleness": self._max_staleness}

    def __setstate__(self, state: dict[str, Any]) -> None:
        RedisStorage.__init__(self, state["url"], state["prefix"], state.get("max_staleness", 0.005))

    def __repr__(self) -> str:
        return f"RedisStorage(prefix={self._prefix!r})"  # no URL: it may hold a password

    @property
    def prefix(self) -> str:
        """The start of every key of this storage.

        >>> RedisStorage(redis_url, "rush:{doctest-store}:optuna-store:").prefix
        'rush:{doctest-store}:optuna-store:'
        """
        return self._prefix

    def clear(self) -> int:
        """Delete every key of this storage (every study); returns how many keys went.

        >>> RedisStorage(redis_url, "rush:{doctest-store}:optuna-store:").clear()
        0
        """
        keys = list(self._client.scan_iter(match=_glob_escape(self._prefix) + "*", count=1000))
        for i in range(0, len(keys), 1000):
            self._client.delete(*keys[i : i + 1000])
        with self._lock:
            self._studies.clear()
            self._finished.clear()
            self._directions.clear()
        return len(keys)

    def _run(self, name: str, *args: Any) -> Any:
        return self._scripts[name](keys=[self._ids_key], args=[self._prefix, *args])

    # ------------------------------------------------------------------------------ studies
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        """Create a study; its id. ``DuplicatedStudyError`` if the name is taken.

        >>> store = RedisStorage(redis_url, "rush:{doctest-store}:optuna-store:")
        >>> store.create_new_study([StudyDirection.MAXIMIZE], "m")
        0
        >>> store.clear()
        4
        """
        directions = list(directions)
        if not directions or not all(isinstance(d, StudyDirection) for d in directions):
            raise ValueError(f"directions must be a non-empty sequence of StudyDirection, got {directions!r}")
        name = study_name if study_name is not None else f"{DEFAULT_STUDY_NAME_PREFIX}{uuid.uuid4()}"
        if not isinstance(name, str):
            raise TypeError(f"study_name must be a string, got {type(name).__name__}")
        sid = int(self._run("create_study", name, json.dumps([d.value for d in directions])))
        if sid < 0:
            raise DuplicatedStudyError(
                f"Another study with name '{name}' already exists. Please specify a "
                "different name, or reuse the existing one by setting `load_if_exists` "
                "(for Python API) or `--skip-if-exists` flag (for CLI)."
            )
        self._directions[sid] = directions
        optuna.logging.get_logger("optuna.storages").info(f"A new study created in Redis with name: {name}")
        return sid

    def delete_study(self, study_id: int) -> None:
        """Delete a study and its trials; ``KeyError`` if there is none with that id.

        >>> store.delete_study(store.get_study_id_from_name("old"))   # doctest: +SKIP
        """
        if int(self._run("delete_study", _int(study_id, "study_id"))) < 0:
            raise KeyError(f"no study with id {study_id}")
        with self._lock:
            cache = self._studies.pop(study_id, None)
            if cache is not None:
                for trial in cache.trials:
                    self._finished.pop(trial._trial_id, None)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        """Set a user attribute of a study (``value``: JSON-serializable).

        >>> store.set_study_user_attr(sid, "dataset", "digits")   # doctest: +SKIP
        """
        self._set_study_attr(study_id, "user", key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        """Set a system attribute of a study (``value``: JSON-serializable).

        >>> store.set_study_system_attr(sid, "metric_names", ["acc"])   # doctest: +SKIP
        """
        self._set_study_attr(study_id, "system", key, value)

    def _set_study_attr(self, study_id: int, kind: str, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"an attribute key must be a string, got {type(key).__name__}")
        if int(self._run("set_study_attr", _int(study_id, "study_id"), kind, key, json.dumps(value))) < 0:
            raise KeyError(f"no study with id {study_id}")

    def get_study_id_from_name(self, study_name: str) -> int:
        """The id of the study named ``study_name``; ``KeyError`` if there is none.

        >>> store.get_study_id_from_name("svc")   # doctest: +SKIP
        0
        """
        sid = self._client.hget(self._prefix + "studies", study_name)
        if sid is None:
            raise KeyError(f"no study named {study_name!r}")
        return int(sid)

    def get_study_name_from_id(self, study_id: int) -> str:
        """The name of study ``study_id``; ``KeyError`` if there is none.

        >>> store.get_study_name_from_id(0)   # doctest: +SKIP
        'svc'
        """
        name = self._client.hget(self._prefix + "names", _int(study_id, "study_id"))
        if name is None:
            raise KeyError(f"no study with id {study_id}")
        return cast(bytes, name).decode()

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        """The directions of study ``study_id`` (they never change: read once).

        >>> store.get_study_directions(0)   # doctest: +SKIP
        [<StudyDirection.MINIMIZE: 1>]
        """
        directions = self._directions.get(study_id)
        if directions is None:
            raw = self._client.hget(f"{self._prefix}s:{_int(study_id, 'study_id')}", "directions")
            if raw is None:
                raise KeyError(f"no study with id {study_id}")
            directions = self._directions[study_id] = [StudyDirection(d) for d in json.loads(raw)]
        return list(directions)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        """The user attributes of a study.

        >>> store.get_study_user_attrs(0)   # doctest: +SKIP
        {'dataset': 'digits'}
        """
        return self._study_attrs(study_id, "user")

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        """The system attributes of a study.

        >>> store.get_study_system_attrs(0)   # doctest: +SKIP
        {}
        """
        return self._study_attrs(study_id, "system")

    def _study_attrs(self, study_id: int, kind: str) -> dict[str, Any]:
        key = f"{self._prefix}s:{_int(study_id, 'study_id')}"
        pipe = self._client.pipeline(transaction=False)
        pipe.exists(key)
        pipe.hgetall(f"{key}:{kind}")
        exists, raw = pipe.execute()
        if not exists:
            raise KeyError(f"no study with id {study_id}")
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    def get_all_studies(self) -> list[FrozenStudy]:
        """Every study, by id.

        >>> [s.study_name for s in store.get_all_studies()]   # doctest: +SKIP
        ['svc']
        """
        raw = cast("dict[bytes, bytes]", self._client.hgetall(self._prefix + "names"))
        names = {int(k): v.decode() for k, v in raw.items()}
        ids = sorted(names)
        pipe = self._client.pipeline(transaction=False)
        for sid in ids:
            key = f"{self._prefix}s:{sid}"
            pipe.hget(key, "directions")
            pipe.hgetall(key + ":user")
            pipe.hgetall(key + ":system")
        replies = pipe.execute()
        studies = []
        for i, sid in enumerate(ids):
            directions, user, system = replies[3 * i : 3 * i + 3]
            if directions is None:  # deleted meanwhile
                continue
            studies.append(
                FrozenStudy(
                    study_name=names[sid],
                    direction=None,
                    study_id=sid,
                    directions=[StudyDirection(d) for d in json.loads(directions)],
                    user_attrs={k.decode(): json.loads(v) for k, v in user.items()},
                    system_attrs={k.decode(): json.loads(v) for k, v in system.items()},
                )
            )
        return studies

    # ------------------------------------------------------------------------------- trials
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        """Create a trial (RUNNING, or as ``template_trial``); its id. ``KeyError`` if no such study.

        >>> tid = store.create_new_trial(sid)   # doctest: +SKIP
        >>> store.get_trial(tid).state          # doctest: +SKIP
        <TrialState.RUNNING: 0>
        """
        sid = _int(study_id, "study_id")
        now = datetime.now()
        dists: list[Any] = []
        fields: list[Any] = []
        if template_trial is None:
            state = TrialState.RUNNING
            fields += ["ds", now.isoformat()]
        else:
            t = template_trial
            state = t.state
            if t.datetime_start is not None:
                fields += ["ds", t.datetime_start.isoformat()]
            if t.datetime_complete is not None:
                fields += ["dc", t.datetime_complete.isoformat()]
            elif state.is_finished():
                fields += ["dc", now.isoformat()]
            if t.values is not None:
                fields += ["v", json.dumps([float(v) for v in t.values])]
            for name, value in t.params.items():
                dist = t.distributions[name]
                text = distribution_to_json(dist)
                dists += [name, text]
                fields += [f"p:{name}", repr(float(dist.to_internal_repr(value))), f"d:{name}", text]
            for step, value in t.intermediate_values.items():
                fields += [f"i:{int(step)}", repr(float(value))]
            fields += [x for k, v in t.user_attrs.items() for x in (f"u:{k}", json.dumps(v))]
            fields += [x for k, v in t.system_attrs.items() for x in (f"s:{k}", json.dumps(v))]
        reply = self._run("create_trial", sid, state.value, now.isoformat(), len(dists) // 2, *dists, *fields)
        if int(reply[0]) < 0:
            raise KeyError(f"no study with id {study_id}")
        tid, number = int(reply[0]), int(reply[1])
        self._saw_waiting(sid, int(reply[2]))
        if template_trial is None:
            with self._lock:
                self._owned[tid] = FrozenTrial(
                    number=number,
                    state=state,
                    value=None,
                    datetime_start=now,
                    datetime_complete=None,
                    params={},
                    distributions={},
                    user_attrs={},
                    system_attrs={},
                    intermediate_values={},
                    trial_id=tid,
                )
        return tid

    def set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: BaseDistribution
    ) -> None:
        """Set a parameter of a RUNNING trial (internal representation).

        ``ValueError`` if the study has seen ``param_name`` with an
        incompatible distribution.

        >>> store.set_trial_param(tid, "x", 0.5, optuna.distributions.FloatDistribution(0, 1))  # doctest: +SKIP
        """
        if not isinstance(distribution, BaseDistribution):
            raise TypeError(f"distribution must be an optuna distribution, got {distribution!r}")
        text = distribution_to_json(distribution)
        value = repr(float(param_value_internal))
        fields = [f"p:{param_name}", value, f"d:{param_name}", text]
        reply = self._run("set_fields", _int(trial_id, "trial_id"), param_name, text, "0", *fields)
        if int(reply[0]) == -3:  # the study knows another distribution for that name: compatible?
            check_distribution_compatibility(self._distribution(reply[1]), distribution)
            reply = self._run("set_fields", trial_id, param_name, text, "1", *fields)
        self._check(reply, trial_id)
        with self._lock:
            mirror = self._owned.get(trial_id)
            if mirror is not None:
                mirror.params[param_name] = distribution.to_external_repr(float(param_value_internal))
                mirror.distributions[param_name] = distribution

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        """Change a trial's state (and values); False if asked RUNNING for a trial that is not WAITING.

        >>> store.set_trial_state_values(tid, TrialState.COMPLETE, [0.25])   # doctest: +SKIP
        True
        """
        if not isinstance(state, TrialState):
            raise TypeError(f"state must be a TrialState, got {state!r}")
        text = "" if values is None else json.dumps([float(v) for v in values])
        reply = self._run("set_state", _int(trial_id, "trial_id"), state.value, text, datetime.now().isoformat())
        self._check(reply, trial_id)
        self._saw_waiting(int(reply[2]), int(reply[1]))
        changed = int(reply[0]) == 1
        with self._lock:
            if len(reply) > 3:  # it finished: keep it (it cannot change any more)
                self._finished[trial_id] = self._parse(trial_id, reply[3])
            if changed and state == TrialState.RUNNING:
                self._owned[trial_id] = None  # taken from WAITING: this object runs it
            elif changed:
                self._owned.pop(trial_id, None)
        return changed

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        """Report an intermediate value of a RUNNING trial.

        >>> store.set_trial_intermediate_value(tid, 3, 0.9)   # doctest: +SKIP
        """
        step = _int(step, "step")
        value = float(intermediate_value)
        self._set_fields(trial_id, f"i:{step}", repr(value))
        with self._lock:
            mirror = self._owned.get(trial_id)
            if mirror is not None:
                mirror.intermediate_values[step] = value

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Set a user attribute of a RUNNING trial (``value``: JSON-serializable).

        >>> store.set_trial_user_attr(tid, "loss", [0.3, 0.2])   # doctest: +SKIP
        """
        text = json.dumps(value)
        self._set_fields(trial_id, f"u:{_str(key)}", text)
        with self._lock:
            mirror = self._owned.get(trial_id)
            if mirror is not None:
                mirror.user_attrs[key] = json.loads(text)  # as a reader would see it (a tuple comes back a list)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        """Set a system attribute of a RUNNING trial (``value``: JSON-serializable).

        >>> store.set_trial_system_attr(tid, "fail_reason", "worker lost")   # doctest: +SKIP
        """
        text = json.dumps(value)
        self._set_fields(trial_id, f"s:{_str(key)}", text)
        with self._lock:
            mirror = self._owned.get(trial_id)
            if mirror is not None:
                mirror.system_attrs[key] = json.loads(text)

    def _set_fields(self, trial_id: int, field: str, value: str) -> None:
        self._check(self._run("set_fields", _int(trial_id, "trial_id"), "", "", "0", field, value), trial_id)

    def _check(self, reply: list[Any], trial_id: int) -> None:
        code = int(reply[0])
        if code < 0:
            with self._lock:
                self._owned.pop(trial_id, None)  # finished by another process (or gone)
        if code == -1:
            raise KeyError(f"no trial with id {trial_id}")
        if code == -2:
            raise UpdateFinishedTrialError(f"Trial#{int(reply[1])} has already finished and can not be updated.")

    def get_trial(self, trial_id: int) -> FrozenTrial:
        """A trial; ``KeyError`` if there is none with that id. Finished trials come from the cache.

        >>> store.get_trial(tid).params   # doctest: +SKIP
        {'x': 0.5}
        """
        trial = self._finished.get(trial_id)
        if trial is not None:
            return trial
        with self._lock:
            mirror = self._owned.get(trial_id)
            if mirror is not None:  # a RUNNING trial of this object: what its own writes made it
                return _copy(mirror)
        raw = self._client.hgetall(f"{self._prefix}t:{_int(trial_id, 'trial_id')}")
        if not raw:
            raise KeyError(f"no trial with id {trial_id}")
        trial = self._parse(trial_id, raw)
        with self._lock:
            if trial.state in _FINISHED:
                self._finished[trial_id] = trial
                self._owned.pop(trial_id, None)
            elif trial_id in self._owned and trial.state == TrialState.RUNNING:
                self._owned[trial_id] = _copy(trial)
        return trial

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        """The id of trial number ``trial_number`` of a study; ``KeyError`` if there is none.

        >>> store.get_trial_id_from_study_id_trial_number(sid, 0)   # doctest: +SKIP
        0
        """
        number = _int(trial_number, "trial_number")
        tid = (
            self._client.lindex(f"{self._prefix}s:{_int(study_id, 'study_id')}:trials", number) if number >= 0 else None
        )
        if tid is None:
            raise KeyError(f"No trial with trial number {trial_number} exists in study with study_id {study_id}.")
        return int(tid)

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        """How many trials a study has (in ``state``, a state or a tuple of states).

        >>> store.get_n_trials(sid, TrialState.COMPLETE)   # doctest: +SKIP
        1
        """
        if state is not None:
            return super().get_n_trials(study_id, state)
        key = f"{self._prefix}s:{_int(study_id, 'study_id')}"
        pipe = self._client.pipeline(transaction=False)
        pipe.exists(key)
        pipe.llen(key + ":trials")
        exists, n = pipe.execute()
        if not exists:
            raise KeyError(f"no study with id {study_id}")
        return int(n)

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        """The trials of a study by number (those in ``states``), in one round trip.

        Finished trials come from this object's cache, topped up with the
        ones that finished since its last read; RUNNING and WAITING trials
        are read anew.

        >>> [t.number for t in store.get_all_trials(sid, states=[TrialState.COMPLETE])]   # doctest: +SKIP
        [0, 2, 3]
        """
        sid = _int(study_id, "study_id")
        if states is None:
            mode = "all"
        else:
            wanted = [s for s in TrialState if s in states]
            if all(s in _FINISHED for s in wanted):
                mode = "finished"
            elif wanted == [TrialState.WAITING]:
                mode = "waiting"
            else:
                mode = "all"
        cache = self._studies.get(sid)
        if (
            mode == "waiting"
            and cache is not None
            and cache.waiting == 0
            and time.monotonic() - cache.waiting_at < self._max_staleness
        ):
            return []  # Redis said a moment ago that no trial was WAITING
        read = cache.read if cache is not None else 0
        now = time.monotonic()
        reply = self._run("sync", sid, read, mode)
        if int(reply[0]) < 0:
            raise KeyError(f"no study with id {study_id}")
        _, done_ids, done_fields, active_ids, active_fields, waiting = reply
        with self._lock:
            cache = self._studies.get(sid)
            if cache is None:
                cache = self._studies[sid] = _StudyCache()
            cache.waiting, cache.waiting_at = int(waiting), now
            skip = max(cache.read - read, 0)  # another thread read some of them meanwhile
            for raw_id, fields in list(zip(done_ids, done_fields))[skip:]:
                tid = int(raw_id)
                trial = self._finished.get(tid)
                if trial is None:
                    trial = self._finished[tid] = self._parse(tid, fields)
                cache.add(trial)
            cache.read = max(cache.read, read + len(done_ids))
            finished = list(cache.trials) if mode != "waiting" else []
        active = [self._parse(int(tid), fields) for tid, fields in zip(active_ids, active_fields)]
        if active:
            finished += active
            finished.sort(key=_number)
        trials = finished
        if states is not None:
            trials = [t for t in trials if t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def _saw_waiting(self, sid: int, waiting: int) -> None:
        cache = self._studies.get(sid)
        if cache is not None:
            cache.waiting, cache.waiting_at = waiting, time.monotonic()

    # ------------------------------------------------------------------------------ parsing
    def _distribution(self, text: bytes) -> BaseDistribution:
        dist = self._dists.get(text)
        if dist is None:
            dist = self._dists[text] = json_to_distribution(bytes(text).decode())
        return dist

    def _parse(self, trial_id: int, raw: Any) -> FrozenTrial:
        """A FrozenTrial from a trial's hash (a dict, or the flat list of HGETALL in a script)."""
        items = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2])
        state = TrialState.RUNNING
        number = -1
        values = start = complete = None
        internal: dict[str, float] = {}
        dists: dict[str, BaseDistribution] = {}
        inter: dict[int, float] = {}
        user: dict[str, Any] = {}
        system: dict[str, Any] = {}
        for k, v in items:
            tag, name = k[:2], k[2:]
            if tag == b"p:":
                internal[name.decode()] = float(v)
            elif tag == b"d:":
                dists[name.decode()] = self._distribution(v)
            elif tag == b"i:":
                inter[int(name)] = float(v)
            elif tag == b"u:":
                user[name.decode()] = json.loads(v)
            elif tag == b"s:":
                system[name.decode()] = json.loads(v)
            elif k == b"st":
                state = _STATES[int(v)]
            elif k == b"n":
                number = int(v)
            elif k == b"v":
                values = json.loads(v)
            elif k == b"ds":
                start = datetime.fromisoformat(v.decode())
            elif k == b"dc":
                complete = datetime.fromisoformat(v.decode())
        params = {name: dists[name].to_external_repr(value) for name, value in internal.items()}
        return FrozenTrial(
            number=number,
            state=state,
            value=None,
            values=values,
            datetime_start=start,
            datetime_complete=complete,
            params=params,
            distributions=dists,
            user_attrs=user,
            system_attrs=system,
            intermediate_values=inter,
            trial_id=trial_id,
        )


def _copy(trial: FrozenTrial) -> FrozenTrial:
    """A copy of a trial whose dicts can change without changing the original's."""
    return FrozenTrial(
        number=trial.number,
        state=trial.state,
        value=None,
        values=trial.values,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=dict(trial.params),
        distributions=dict(trial.distributions),
        user_attrs=dict(trial.user_attrs),
        system_attrs=dict(trial.system_attrs),
        intermediate_values=dict(trial.intermediate_values),
        trial_id=trial._trial_id,
    )


def _number(trial: FrozenTrial) -> int:
    return trial.number


def _int(value: Any, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None


def _str(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"an attribute key must be a string, got {type(key).__name__}")
    return key


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)

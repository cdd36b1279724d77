"""Post-training jobs: `POST /v1/training-jobs` with `kind` sft, reward_model, dpo, ppo or redteam.

A post-training job is a training job (same table, lifecycle, Ray actor and progress files;
api/training_jobs.py) whose actor runs another command of the training client on the config
the service wrote to OUT/train_config.json:

    kind          command (training client)              starts from    data field: record kind
    pretrain      training.cli:train_command             manifest_id    the manifest's shards
    sft           training.sft:sft_command               a checkpoint   data: chat (a list of sources)
    reward_model  training.reward_model:...command       a checkpoint   data: preference
    dpo           training.dpo:dpo_command               a checkpoint   data: preference
    ppo           training.ppo:ppo_command               a checkpoint   prompts: prompt (+ reward_model or reward)
    redteam       training.redteam:redteam_command       a checkpoint   prompts: prompt (+ an optional reward model)

Each kind's config is its command's (SFTConfig, RewardModelConfig, DPOConfig, PPOConfig; for
redteam RedteamConfig's fields plus `prompts`), less the fields the service sets.

Inputs, as the service refers to things it already holds:
- the starting checkpoint: `init_from_job: trn_...`, a succeeded training job whose latest
  complete checkpoint is used (its out_uri must be local: the trainers read local checkpoints);
  `reward_from_job` likewise names a reward_model job (ppo's scorer, redteam's classifier);
- the data: `config.data` (`config.prompts` for ppo and redteam, their commands' name) and
  `config.eval_files`, absolute paths under the service's allowed
  roots or its storage (the rule eval files and corpora registered by URI follow): a JSONL file
  of the kind's records, or a curated post-training set (`flywheel curate-posttrain`'s folder or
  its posttrain_manifest.json). Uploads are corpora of `{"text"}` documents and are not accepted
  here (a chat file has no text field; its upload is refused with "no valid documents").

What the web process checks (422 with one line, without torch): the kind is known and built (501
if its command module is missing: "ppo is not available in this build"), the checkpoint and the
data exist where allowed and the first records are of the right kind; for sft every TrainConfig
field (SFTConfig extends it), for the other kinds their whole config (training.preference_config,
training.ppo_config, training.redteam_config: modules without torch), so a bad field is a 422
with pydantic's message, not a job that starts and fails.

A redteam job writes OUT/report.json and OUT/responses.jsonl (contract.layout.RedteamRun) and its
failures as SFT refusal examples, OUT/refusal_sft.jsonl: the next sft job's `data` (the service's
storage is readable), the article's "fixed most of the failure modes" round.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from itertools import islice
from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError
from sqlalchemy.orm import Session

from api.errors import one_line
from api.locations import LocationError, LocationForbidden, allowed_location
from api.models import TrainingJob
from api.run_files import finite, thin
from contract.jsonl import read_jsonl
from contract.layout import RedteamRun, TrainingRun, join
from contract.locations import local_path
from contract.posttrain import (
    PosttrainRun,
    RecordError,
    is_posttrain_manifest,
    parse_record,
    read_posttrain_manifest,
)
from contract.stores import complete_folders, exists, filesystem_for
from training.ppo_config import PPOConfig
from training.preference_config import DPOConfig, RewardModelConfig
from training.redteam_config import RedteamConfig
from training.train_config import TrainConfig

# The kinds besides pretraining (api.schemas.TrainingKind lists them all).
POSTTRAIN_KINDS: tuple[str, ...] = ("sft", "reward_model", "ppo", "dpo", "redteam")
# "module:function" of each kind's command: `function(config_path, local=True)`, run in the job's actor.
COMMANDS = {
    "pretrain": "training.cli:train_command",
    "sft": "training.sft:sft_command",
    "reward_model": "training.reward_model:reward_model_command",
    "dpo": "training.dpo:dpo_command",
    "ppo": "training.ppo:ppo_command",
    "redteam": "api.posttrain_jobs:redteam_from_config",  # training.redteam takes arguments, not a config file
}
# The record kind (contract.posttrain) each kind trains or generates on, and the config field naming it.
DATA_KIND = {"sft": "chat", "reward_model": "preference", "dpo": "preference", "ppo": "prompt", "redteam": "prompt"}
DATA_FIELD = {"sft": "data", "reward_model": "data", "dpo": "data", "ppo": "prompts", "redteam": "prompts"}
# Which kinds of job a kind may start from (its policy or backbone), and which may score for it.
INIT_KINDS = {
    "sft": ("pretrain", "sft"),
    "reward_model": ("pretrain", "sft"),
    "dpo": ("pretrain", "sft"),
    "ppo": ("pretrain", "sft"),
    "redteam": ("pretrain", "sft", "dpo", "ppo"),
}
# Fields the service sets on a post-training config (where it reads and writes, one process).
POSTTRAIN_SERVICE_KEYS = ("init_checkpoint", "out_dir", "workers", "min_workers", "cache_dir", "manifest",
                          "reward_model", "to_sft")
# Kinds trained by one process of the training client's launcher (`workers`: 1) that evaluate eval_files.
LAUNCHED_KINDS = ("sft", "reward_model", "dpo")
# sft's data is a list of sources, the preference trainers' a single one (PreferenceConfig.data).
LIST_DATA_KINDS = ("sft",)
RECORDS_CHECKED = 20  # the first records of a data file, read before anything starts
HEAD_BYTES = 1 << 20  # ... from at most its first MiB: the trainer validates all of it


def command_available(kind: str) -> bool:
    """Whether this build has the kind's command module (found without importing it: torch)."""
    # redteam runs through this module's adapter: the build has it when training.redteam exists.
    module = "training.redteam" if kind == "redteam" else COMMANDS[kind].split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def run_command(kind: str, config_uri: str) -> Any:
    """The kind's training command on the config at `config_uri`, in this process (the job's actor)."""
    module, function = COMMANDS[kind].split(":")
    command = getattr(importlib.import_module(module), function)  # torch: imported in the job's actor only
    return command(config_uri, local=True)


def redteam_from_config(config_uri: str, local: bool = True) -> Any:
    """`flywheel redteam` on a job's config: the checkpoint, prompts and optional reward model the
    service resolved, RedteamConfig's fields as given; the failures go to OUT/refusal_sft.jsonl."""
    from training.redteam import redteam_command  # torch: in the job's actor only

    with open(config_uri) as f:
        cfg = json.load(f)
    return redteam_command(cfg["init_checkpoint"], cfg["prompts"], cfg["out_dir"], reward_model=cfg.get("reward_model"),
                           config=RedteamConfig.model_validate(redteam_fields(cfg)), to_sft=RedteamRun(cfg["out_dir"]).refusal_sft)


# --- inputs --------------------------------------------------------------------------------------

def latest_checkpoint(session: Session, job_id: str, kinds: tuple[str, ...], field: str) -> tuple[TrainingJob, str]:
    """(job, its latest complete checkpoint folder) of the succeeded job `job_id` of one of `kinds`:
    404 if there is no such job, 422 if it cannot serve (wrong kind, not succeeded, no checkpoint)."""
    job = session.get(TrainingJob, job_id)
    if job is None:
        raise HTTPException(404, detail=f"{field}: no training job {job_id}")
    if job.kind not in kinds:
        raise HTTPException(422, detail=f"{field}: {job_id} is a {job.kind} job; expected {' or '.join(kinds)}")
    if job.state != "succeeded":
        raise HTTPException(422, detail=f"{field}: {job_id} is {job.state}; only a succeeded job's checkpoint is used")
    if local_path(job.out_uri) is None:
        raise HTTPException(422, detail=f"{field}: {job_id} wrote to {job.out_uri}; the trainers read local "
                                        "checkpoints")
    fs, out = filesystem_for(job.out_uri)
    folders = complete_folders(fs, join(out, TrainingRun.CHECKPOINTS), TrainingRun.CHECKPOINT_STEP,
                               TrainingRun.CHECKPOINT_META)
    if not folders:
        raise HTTPException(422, detail=f"{field}: {job_id} has no complete checkpoint")
    return job, join(job.out_uri, TrainingRun.CHECKPOINTS, folders[-1])


def checkpoint_meta(step_dir: str) -> dict[str, Any]:
    """meta.json of a checkpoint folder (the architecture, preset and manifest SFT starts from)."""
    with open(join(step_dir, TrainingRun.CHECKPOINT_META)) as f:
        return json.load(f)


def allowed_local_input(uri: str, roots: tuple[str, ...], field: str, folders: bool = False) -> str:
    """`uri` as a real local path inside an allowed root or the service's storage (the rule corpora
    registered by URI follow): 403 outside them, 422 unless an existing local file (or folder)."""
    try:
        real = allowed_location(uri, roots)
    except (LocationError, LocationForbidden) as e:
        raise HTTPException(e.status, detail=f"{field}: {str(e).removeprefix('uri: ')}") from None
    exists = os.path.exists if folders else os.path.isfile
    if local_path(real) is None or not exists(real):
        what = "local file or folder" if folders else "local file"
        raise HTTPException(422, detail=f"{field}: {uri} is not a {what} (the trainer reads it)")
    return real


def validated_source(uri: str, roots: tuple[str, ...], field: str, record_kind: str) -> str:
    """`uri` as a real local path under `roots`: a JSONL file whose first records are `record_kind`
    records, or a curated post-training set holding some of them. 403 outside the roots, 422 else."""
    real = allowed_local_input(uri, roots, field, folders=True)
    if is_posttrain_manifest(real):
        try:
            manifest = read_posttrain_manifest(real)
        except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
            raise HTTPException(422, detail=f"{field}: {uri}: not a readable post-training manifest ({one_line_of(e)})")
        if not manifest.files_of(record_kind):
            raise HTTPException(422, detail=f"{field}: {uri} holds no {record_kind} records")
        return real
    if not os.path.isfile(real):
        raise HTTPException(422, detail=f"{field}: {uri} is a folder without {PosttrainRun.MANIFEST}")
    check_head(real, field, record_kind)
    return real


def one_line_of(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


def check_head(path: str, field: str, record_kind: str) -> None:
    """422 unless the file's first records (up to RECORDS_CHECKED, in its first HEAD_BYTES) are
    `record_kind` records: a chat file given as preference data is caught before a job starts."""
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    lines = head.split(b"\n")
    if len(head) == HEAD_BYTES:
        lines = lines[:-1]  # the last line may be cut
    checked = 0
    for number, line in enumerate(islice((ln for ln in lines if ln.strip()), RECORDS_CHECKED), start=1):
        try:
            parse_record(json.loads(line), record_kind)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPException(422, detail=f"{field}: {path}:{number}: not JSON ({e})") from None
        except RecordError as e:
            raise HTTPException(422, detail=f"{field}: {path}:{number}: {e}") from None
        checked += 1
    if checked == 0:
        raise HTTPException(422, detail=f"{field}: {path} holds no records")


def data_sources(config: dict[str, Any], kind: str) -> list[str]:
    """The data field as a list (sft takes several sources, the other kinds one)."""
    name = DATA_FIELD[kind]
    data = config.get(name)
    if data is None or data == [] or data == "":
        raise HTTPException(422, detail=f"config.{name}: {kind} needs {DATA_KIND[kind]} data "
                                       f"(a JSONL file or a curated post-training set)")
    sources = data if isinstance(data, list) else [data]
    if not all(isinstance(s, str) and s for s in sources):
        raise HTTPException(422, detail=f"config.{name}: a path or a list of paths")
    if kind not in LIST_DATA_KINDS and len(sources) != 1:
        raise HTTPException(422, detail=f"config.{name}: {kind} reads one source, got {len(sources)}")
    return sources


def validated_posttrain_config(session: Session, kind: str, config: dict[str, Any], *, init_from_job: str | None,
                               reward_from_job: str | None, out_dir: str,
                               roots: tuple[str, ...]) -> tuple[dict[str, Any], str | None]:
    """(the config the kind's command reads, the manifest id of the starting job) for a post-training
    job, checked as far as the web process can without torch; HTTPException (422/403/404/501) if not."""
    if not command_available(kind):
        raise HTTPException(501, detail=f"{kind} is not available in this build ({COMMANDS[kind].split(':')[0]} "
                                        f"is missing)")
    given = [k for k in POSTTRAIN_SERVICE_KEYS if k in config]
    if given:
        raise HTTPException(422, detail=f"config: {', '.join(given)} are set by the service (use init_from_job, "
                                        f"reward_from_job)")
    if init_from_job is None:
        raise HTTPException(422, detail=f"init_from_job: {kind} starts from a checkpoint: name a succeeded "
                                        f"{' or '.join(INIT_KINDS[kind])} job")
    init_job, init_checkpoint = latest_checkpoint(session, init_from_job, INIT_KINDS[kind], "init_from_job")
    record_kind, data_field = DATA_KIND[kind], DATA_FIELD[kind]
    data = [validated_source(s, roots, f"config.{data_field}", record_kind) for s in data_sources(config, kind)]
    out = {**config, "init_checkpoint": init_checkpoint, data_field: data if kind in LIST_DATA_KINDS else data[0],
           "out_dir": out_dir}
    if kind in LAUNCHED_KINDS:
        eval_files = config.get("eval_files") or []
        if not isinstance(eval_files, list):
            raise HTTPException(422, detail="config.eval_files: a list of paths")
        out["eval_files"] = [validated_source(s, roots, "config.eval_files", record_kind) for s in eval_files]
        out["workers"] = 1
    if kind == "ppo" and reward_from_job is None and not config.get("reward"):
        raise HTTPException(422, detail="ppo needs a reward: reward_from_job (a reward_model job) or config.reward "
                                        "(a rule reward: rule:shorter, rule:contains:TEXT)")
    if reward_from_job is not None:
        if kind not in ("ppo", "redteam"):
            raise HTTPException(422, detail=f"reward_from_job: {kind} takes no reward model")
        _, out["reward_model"] = latest_checkpoint(session, reward_from_job, ("reward_model",), "reward_from_job")
    if kind == "redteam" and local_path(out_dir) is None:
        raise HTTPException(422, detail="redteam writes its report to a local folder: this service stores to "
                                        f"{out_dir}")
    if kind == "sft":
        check_sft_fields(out, init_checkpoint)
    else:
        check_config(kind, out)
    return out, init_job.manifest_id


# The config class each kind's command validates, besides sft (resolved against its checkpoint:
# check_sft_fields) and redteam (RedteamConfig, on redteam_fields).
CONFIG_TYPES = {"reward_model": RewardModelConfig, "dpo": DPOConfig, "ppo": PPOConfig}


def redteam_fields(config: dict[str, Any]) -> dict[str, Any]:
    """RedteamConfig's part of a redteam job's config: the rest is the service's (checkpoints, folders)
    and `prompts`, which redteam_command takes as arguments."""
    return {k: v for k, v in config.items() if k not in (*POSTTRAIN_SERVICE_KEYS, "prompts")}


def check_config(kind: str, config: dict[str, Any]) -> None:
    """The whole config as the kind's command validates it: 422 with pydantic's message."""
    try:
        if kind == "redteam":
            RedteamConfig.model_validate(redteam_fields(config))
        else:
            CONFIG_TYPES[kind].model_validate(config)
    except ValidationError as e:
        raise HTTPException(422, detail=f"config: {one_line(e.errors())}") from None
    except TypeError as e:  # PreferenceConfig's before-validator meets e.g. `"steps": [1]`
        raise HTTPException(422, detail=f"config: {e}") from None


def check_sft_fields(config: dict[str, Any], init_checkpoint: str) -> None:
    """The TrainConfig part of an SFTConfig, resolved as `training.sft.load_sft_config` resolves it
    (architecture, preset and manifest from the checkpoint): 422 with pydantic's message."""
    try:
        meta = checkpoint_meta(init_checkpoint)
    except (OSError, ValueError) as e:
        raise HTTPException(422, detail=f"init_from_job: {init_checkpoint}: unreadable meta.json ({e})") from None
    if "model_config" not in meta or not meta.get("manifest"):
        raise HTTPException(422, detail="init_from_job: its checkpoint's meta.json lacks model_config or manifest")
    fields = {k: v for k, v in config.items() if k not in ("init_checkpoint", "data")}
    model = fields.get("model", {})
    if not isinstance(model, dict):
        raise HTTPException(422, detail="config.model: overrides of the checkpoint's architecture, as a mapping")
    fields = {"preset": meta.get("preset") or "tiny", "manifest": meta["manifest"], **fields,
              "model": {**meta["model_config"], **model}}
    try:
        cfg = TrainConfig.model_validate(fields)
    except ValidationError as e:
        raise HTTPException(422, detail=f"config: {one_line(e.errors())}") from None
    except TypeError as e:  # TrainConfig's before-validator meets e.g. `"steps": [1]`
        raise HTTPException(422, detail=f"config: {e}") from None
    if not cfg.document_mask:
        raise HTTPException(422, detail="config: SFT packs conversations together: document_mask must stay on")


# --- progress: every curve a kind writes -------------------------------------------------------------

# metrics.jsonl / eval.jsonl keys that are bookkeeping, not curves (step counters, clocks, layout).
NOT_CURVES = frozenset({"step", "time", "tokens", "tokens_per_s", "mfu", "step_s", "eval_s", "consumed", "world",
                        "ep", "tp", "pp", "dp", "micro_batch", "micro_pairs", "accum", "pairs", "lr", "router_lr"})


def _numbers(record: dict[str, Any], prefix: str = "") -> dict[str, float | None]:
    """A record's numeric fields as series names; one level of nesting is flattened
    (eval's `overall.loss` -> `overall_loss`, a margin distribution's `margin.p05` -> `margin_p05`)."""
    out: dict[str, float | None] = {}
    for key, value in record.items():
        if key in NOT_CURVES:
            continue
        if isinstance(value, dict) and key not in ("domains", "files", "categories"):
            out.update({f"{prefix}{key}_{k}": finite(v) for k, v in value.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = finite(value)
    return out


def metric_curves(records: list[dict[str, Any]], evals: list[dict[str, Any]],
                  max_points: int = 1000) -> dict[str, list[dict[str, Any]]]:
    """Every numeric series of metrics.jsonl (by its key) and eval.jsonl (`eval_<key>`), as
    [{step, value}] evenly thinned to `max_points`: loss for pretraining; held-out assistant loss
    (`eval_overall_loss`) for sft; accuracy and margins for reward_model and dpo; reward_mean, kl,
    clip_frac... for ppo: whatever the kind writes."""
    curves: dict[str, list[dict[str, Any]]] = {}
    for source, prefix in ((records, ""), (evals, "eval_")):
        for r in source:
            if not isinstance(r.get("step"), int):
                continue
            for name, value in _numbers(r, prefix).items():
                curves.setdefault(name, []).append({"step": r["step"], "value": value})
    return {name: thin(points, max_points) for name, points in sorted(curves.items())}


# --- red-team reports --------------------------------------------------------------------------------
# The files of a redteam job's OUT (contract.layout.RedteamRun, training.redteam writes them): report.json,
# by_category / by_expected / overall: {prompts, failed, failure_rate, reasons}; responses.jsonl, one line
# per prompt: category, prompt, response, failed, reason, ...


def read_redteam_report(out_uri: str) -> dict[str, Any] | None:
    """OUT/report.json, or None before the report is written."""
    fs, out = filesystem_for(out_uri)
    path = RedteamRun(out).report
    if not exists(fs, path):
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def failure_rates(report: dict[str, Any]) -> dict[str, float | None]:
    """Failure rate (failed / prompts) per category of a report."""
    return {name: finite(c.get("failure_rate")) for name, c in (report.get("by_category") or {}).items()
            if isinstance(c, dict)}


def read_redteam_responses(out_uri: str, limit: int, offset: int, category: str | None = None) -> dict[str, Any]:
    """One page of OUT/responses.jsonl (optionally one category's lines) and the total."""
    rows = read_jsonl(RedteamRun(out_uri).responses)
    if category is not None:
        rows = [r for r in rows if r.get("category") == category]
    return {"total": len(rows), "limit": limit, "offset": offset, "items": rows[offset:offset + limit]}

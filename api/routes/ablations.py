"""/v1/ablations: run a data ablation on a corpus, follow the variants' loss curves, read the result."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session

from api.ablations import MAX_CURVE_POINTS, read_curves, read_result, variant_names
from api.auth import require_admin, require_read
from api.deps import JSON_BODY_LIMIT, MAX_OFFSET, ServicesDep, SessionDep, newest_first_page
from api.errors import one_line
from api.ids import ABLATION_ID, new_id
from api.locations import LocationError, LocationForbidden
from api.models import Ablation, Corpus
from api.schemas import (
    AblationBudget,
    AblationCreate,
    AblationLeakage,
    AblationList,
    AblationOut,
    AblationRunResult,
    AblationSummary,
    AblationSummaryRow,
    AblationTableRow,
    Problem,
)
from api.stage_paths import check_location, check_stage_paths
from contract.locations import local_path
from curation.config import ConfigError
from workflows.ablation.config import parse_ablation_config

router = APIRouter(tags=["ablations"])
# AblationConfig fields the service sets: the corpus's files and where the run writes.
SERVICE_KEYS = ("corpus", "output")

AblationIdPath = Annotated[str, Path(pattern=ABLATION_ID)]
AblationState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
# ablation.json's fields GET answers with, each checked against its model.
RESULT_FIELDS = {"domains": TypeAdapter(list[str]), "budgets": TypeAdapter(list[AblationBudget]),
                 "seeds": TypeAdapter(list[int]), "baseline": TypeAdapter(str), "measures": TypeAdapter(list[str]),
                 "runs": TypeAdapter(list[AblationRunResult]), "summary": TypeAdapter(list[AblationSummaryRow]),
                 "table": TypeAdapter(list[AblationTableRow]), "leakage": TypeAdapter(AblationLeakage)}


def _summary_fields(ablation: Ablation) -> dict[str, Any]:
    return {**{k: getattr(ablation, k) for k in ("id", "corpus_id", "state", "phase", "error", "config", "created_at",
                                                 "started_at", "finished_at")},
            "variants": variant_names(ablation.config)}


def ablation_summary(ablation: Ablation) -> AblationSummary:
    return AblationSummary.model_validate(_summary_fields(ablation))


def result_fields(result: dict[str, Any] | None) -> dict[str, Any]:
    """RESULT_FIELDS of ablation.json (an old one as api.ablations.legacy_result reads it); all
    None (and `result_error` saying why) when it does not fit the documented layout, so that a
    runner bug shows instead of a 500."""
    empty = {**dict.fromkeys(RESULT_FIELDS), "result_error": None}
    if result is None:
        return empty
    fields = {}
    for name, adapter in RESULT_FIELDS.items():
        try:
            fields[name] = adapter.validate_python(result.get(name))
        except ValidationError as e:
            return {**empty, "result_error": f"ablation.json: {name}: {one_line(e.errors())}"}
    return {**fields, "result_error": None}


def ablation_out(ablation: Ablation, max_points: int = MAX_CURVE_POINTS) -> AblationOut:
    return AblationOut.model_validate({
        **_summary_fields(ablation), **result_fields(read_result(ablation.out_uri)),
        "curves": read_curves(ablation.out_uri, ablation.config, max_points),
    })


def get_ablation(session: Session, ablation_id: str) -> Ablation:
    ablation = session.get(Ablation, ablation_id)
    if ablation is None:
        raise HTTPException(404, detail=f"no ablation {ablation_id}")
    return ablation


def validated_config(config: dict[str, Any], corpus: Corpus, out_uri: str, roots: tuple[str, ...]) -> dict[str, Any]:
    """`config` once it validates as an AblationConfig on this corpus (422 with one line if not),
    with every file its stages read inside `roots` (403 outside, 422 for a URI with options).

    Stored as submitted, not re-dumped: a stage's parameters do not survive
    `AblationConfig.model_dump` (StageSpec holds them as the base params type), and the runner
    validates the stored config again when it starts.
    """
    given = [k for k in SERVICE_KEYS if k in config]
    if given:
        raise HTTPException(422, detail=f"config: {' and '.join(given)} are set by the service; name the corpus "
                                        "in corpus_id")
    try:
        cfg = parse_ablation_config(config, corpus=[corpus.pipeline_input()], output=out_uri)
    except ConfigError as e:
        raise HTTPException(422, detail=str(e).replace("ablation config:", "config:", 1)) from None
    except TypeError as e:  # a stage validator meets e.g. `{"name": []}` (not a ValidationError)
        raise HTTPException(422, detail=f"config: not a valid ablation config ({e})") from None
    # A path in the request would make the service read a file of its own disk.
    from_files = [v.name for v in cfg.variants if v.config is not None]
    if from_files:
        raise HTTPException(422, detail=f"config: variant {', '.join(from_files)}: the service does not read config "
                                        "files from its own disk; give the variant's `stages` inline")
    if cfg.tokenizer.path is not None:
        raise HTTPException(422, detail="config: tokenizer.path: the service does not read files from its own disk; "
                                        "leave it out and a tokenizer is trained")
    if cfg.cache_dir is not None:  # a write location: the service keeps the cache under the run's output
        raise HTTPException(422, detail="config: cache_dir is set by the service; leave it out")
    try:
        for v in cfg.variants:
            check_stage_paths(v.stages, roots, f"config.variants.{v.name}.stages")
        check_stage_paths(cfg.holdout.clean_stages, roots, "config.holdout.clean_stages")
        for domain, source in cfg.holdout.sources.items():  # read like the corpus: inside the same roots
            check_location(source, roots, f"config.holdout.sources.{domain}")
    except (LocationError, LocationForbidden) as e:
        raise HTTPException(e.status, detail=str(e)) from None
    return config


@router.post("/ablations", status_code=201, response_model=AblationOut, dependencies=[Depends(require_admin)],
             max_body_size=JSON_BODY_LIMIT,
             responses={403: {"model": Problem}, 409: {"model": Problem}, 413: {"model": Problem},
                        422: {"model": Problem}})
def create_ablation(body: AblationCreate, services: ServicesDep, session: SessionDep) -> AblationOut:
    """Validate the ablation config (422 with one line), then run it on Ray over the corpus.

    The answer comes at once with state `queued`; poll `GET /v1/ablations/{id}`."""
    corpus = session.get(Corpus, body.corpus_id)
    if corpus is None:
        raise HTTPException(422, detail=f"corpus_id: no corpus {body.corpus_id}")
    if corpus.state == "invalid":
        raise HTTPException(422, detail=f"corpus_id: corpus {corpus.id} is invalid ({corpus.error})")
    ablation_id = new_id("abl")
    out_uri = services.storage.uri(f"ablations/{ablation_id}")
    if local_path(out_uri) is None:
        raise HTTPException(409, detail="ablations train models in a local folder: the service's storage is remote "
                                        "(run `flywheel ablate CONFIG` instead)")
    config = validated_config(body.config, corpus, out_uri, services.read_roots)
    ablation = Ablation(id=ablation_id, corpus_id=corpus.id, state="queued", config=config, out_uri=out_uri,
                        phase="queued")
    session.add(ablation)
    session.commit()
    services.ablation_runner.start_or_fail(ablation_id)
    session.refresh(ablation)
    return ablation_out(ablation)


@router.get("/ablations", response_model=AblationList, dependencies=[Depends(require_read)])
def list_ablations(session: SessionDep, state: Annotated[AblationState | None, Query()] = None,
                   limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                   offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict:
    where = [Ablation.state == state] if state else []
    return newest_first_page(session, Ablation, limit, offset, *where, out=ablation_summary)


@router.get("/ablations/{ablation_id}", response_model=AblationOut, dependencies=[Depends(require_read)],
            responses={404: {"model": Problem}})
def read_ablation(ablation_id: AblationIdPath, session: SessionDep,
                  max_points: Annotated[int, Query(ge=2, le=MAX_CURVE_POINTS)] = MAX_CURVE_POINTS) -> AblationOut:
    """State and phase; each training run's loss curves so far (every variant x budget x seed);
    once the ablation has written ablation.json: its budgets, runs, the summary (mean ± sd over
    seeds, paired differences against the baseline with 95% intervals), the result table and the
    leakage check."""
    return ablation_out(get_ablation(session, ablation_id), max_points)


@router.post("/ablations/{ablation_id}/cancel", response_model=AblationOut, dependencies=[Depends(require_admin)],
             max_body_size=JSON_BODY_LIMIT, responses={404: {"model": Problem}, 409: {"model": Problem}})
def cancel_ablation(ablation_id: AblationIdPath, services: ServicesDep, session: SessionDep) -> AblationOut:
    """Mark the ablation cancelled and kill its Ray actor (what it wrote so far stays on disk)."""
    ablation = get_ablation(session, ablation_id)
    if not services.ablation_runner.cancel(ablation_id):
        session.refresh(ablation)
        raise HTTPException(409, detail=f"ablation {ablation_id} already {ablation.state}")
    session.refresh(ablation)
    return ablation_out(ablation)

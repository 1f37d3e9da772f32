"""What a worker process holds: the job store, storage, and models loaded once.

A job goes: start() on the record (counts deliveries, refuses cancelled jobs), load the input,
translate with progress and cancel hooks that read and write the record, write the output
(temp name, then rename), finish() on the record. Torch comes in through ``midiffusion``, and
only when a job actually runs.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jobs import (
    JobError,
    JobOutput,
    JobRecord,
    JobState,
    JobStore,
    StartOutcome,
    open_job_store,
)
from jobs.storage import LocalStorage
from worker import metrics
from worker.settings import WorkerSettings

log = logging.getLogger("midiffusion.worker")

CONTENT_TYPES = {".nii.gz": "application/gzip", ".png": "image/png"}
# A full volume, a quota, or a file-size limit (RLIMIT_FSIZE): no room for the output.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
INTERNAL_MESSAGE = (
    "the worker could not finish this job (an internal error, logged for the operators)"
)


class JobReleased(Exception):
    """The worker is stopping: the job was left unfinished, for another worker to run."""


@dataclass
class _Deadline:
    at: float
    hit: bool = False

    def passed(self) -> bool:
        self.hit = self.hit or time.monotonic() > self.at
        return self.hit


def observe_translation(report: Any, *, load: float, write: float) -> None:
    """A succeeded job's stages, slices and quality figures, into the worker's metrics."""
    metrics.STAGE_SECONDS.labels("load").observe(load)
    metrics.STAGE_SECONDS.labels("preprocess").observe(report.other_seconds)
    metrics.STAGE_SECONDS.labels("sample").observe(report.sample_seconds)
    metrics.STAGE_SECONDS.labels("write").observe(write)
    metrics.SLICES_TRANSLATED.inc(report.slices)
    for name in metrics.QUALITY_METRICS:
        value = report.quality.get(name)
        if value is not None:
            metrics.QUALITY.labels(name).observe(value)


def output_filename(input_filename: str, model_name: str, suffix: str) -> str:
    stem = re.sub(r"(\.nii(\.gz)?|\.gz|\.zip)$", "", input_filename, flags=re.IGNORECASE) or "image"
    return f"{stem}_{model_name}{suffix}"


class WorkerRuntime:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.jobs: JobStore = open_job_store(
            settings.redis_url,
            settings.storage_dir,
            settings.job_retention_s,
            outage_s=settings.store_outage_s,
        )
        self.storage = LocalStorage(settings.storage_dir)
        self.hostname = socket.gethostname()
        self._translators: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()
        self._model_store: Any = None
        # set when the worker is asked to stop (SIGTERM): the running job is released at its
        # next sampling step, back to the queue for another worker, instead of run to the end
        self.stopping = threading.Event()

    # -- models: loaded once per process, kept for its lifetime
    def model_store(self) -> Any:
        if self._model_store is None:
            from model_store import ModelStore

            self._model_store = ModelStore(root=self.settings.model_dir)
        return self._model_store

    def translator(self, name: str, version: int) -> Any:
        with self._lock:
            cached = self._translators.get((name, version))
            if cached is not None:
                return cached
            from midiffusion.pipeline.devices import resolve_device
            from midiffusion.pipeline.translate import Translator

            started = time.perf_counter()
            verified = self.model_store().verified(name, version)
            translator = Translator.load(
                verified.card,
                Path(verified.weights_path),
                device=resolve_device(self.settings.device),
                precision=self.settings.precision,
            )
            metrics.MODEL_LOAD.observe(time.perf_counter() - started)
            self._translators[(name, version)] = translator
            metrics.MODELS_LOADED.set(len(self._translators))
            log.info(
                "loaded model %s v%d on %s (%s)",
                name,
                version,
                translator.device,
                translator.precision,
            )
            return translator

    # -- one job
    def run_job(self, job_id: str, worker: str | None = None) -> str:
        """Run one delivery of a job's task; returns what happened (for logs and tests)."""
        started = self.jobs.start(
            job_id,
            max_attempts=self.settings.max_deliveries,
            worker=worker or self.hostname,
            now=time.time(),
        )
        if started.outcome is not StartOutcome.RUN or started.job is None:
            outcome = "gave_up" if started.outcome is StartOutcome.GAVE_UP else "skipped"
            metrics.JOBS_FINISHED.labels(outcome).inc()
            log.warning("job %s not run: %s", job_id, started.outcome.value)
            return started.outcome.value
        job = started.job
        if job.attempts == 1 and job.started_at is not None:
            waited = max(0.0, job.started_at - job.spec.created_at)
            metrics.QUEUE_WAIT.observe(waited)
            metrics.STAGE_SECONDS.labels("queue").observe(waited)
        metrics.BUSY.set(1)
        metrics.PROGRESS.set(0)
        t0 = time.perf_counter()
        try:
            state, error, output = self._translate(job)
        finally:
            metrics.BUSY.set(0)
        if state is JobState.RUNNING:  # released: not finished here, the task goes back
            log.warning("job %s released: this worker is shutting down", job_id)
            metrics.JOBS_FINISHED.labels("released").inc()
            raise JobReleased(job_id)
        self.jobs.finish(job_id, state, now=time.time(), error=error, output=output)
        metrics.RUN_TIME.labels(state.value).observe(time.perf_counter() - t0)
        metrics.JOBS_FINISHED.labels(state.value).inc()
        if error:
            log.info("job %s %s: %s: %s", job_id, state.value, error.code, error.message)
        else:
            log.info("job %s %s", job_id, state.value)
        if state is JobState.SUCCEEDED and output is not None and job.spec.output_format == "dicom":
            # after the job is finished: its result is downloadable while the push is tried
            from worker.pacs import push_result

            try:
                push_result(self.settings, self.jobs, self.storage, job_id, output)
            except Exception:  # the job stays succeeded; its push record says how far it got
                log.exception("job %s: the push to the PACS failed", job_id)
        return state.value

    def _translate(self, job: JobRecord) -> tuple[JobState, JobError | None, JobOutput | None]:
        from jobs.dicom_intake import DicomRejected
        from midiffusion.io.dicom_series import DicomDecodeError
        from midiffusion.pipeline.translate import TranslationCancelled, TranslationInputError
        from model_store import ModelIntegrityError, ModelNotFoundError

        spec = job.spec
        deadline = _Deadline(time.monotonic() + self.settings.job_timeout_s)

        def progress(done: int, total: int) -> None:
            self.jobs.set_progress(job.id, done, total)
            metrics.PROGRESS.set(done / total if total else 0.0)

        def should_cancel() -> bool:
            return deadline.passed() or self.stopping.is_set() or self.jobs.cancel_requested(job.id)

        try:
            from midiffusion.pipeline.devices import peak_memory_bytes, reset_peak_memory

            stage = time.perf_counter()
            translator = self.translator(spec.model_name, spec.model_version)
            layout = None
            if spec.input_kind == "dicom":
                from worker import dicom_job

                layout, image = dicom_job.load(self.storage, spec.input_key)
            else:
                image = self._load_input(spec.input_key)
            load_seconds = time.perf_counter() - stage
            warnings: list[str] = []
            reset_peak_memory(translator.device)
            report = translator.translate_with_report(
                image,
                preset=spec.preset,
                steps=spec.steps,
                seed=spec.seed,
                kind=spec.anatomy,
                progress=progress,
                should_cancel=should_cancel,
                warn=warnings.append,
                step_seconds=metrics.STEP_SECONDS.observe,
            )
            metrics.GPU_MEMORY.set(peak_memory_bytes(translator.device))
            stage = time.perf_counter()
            uncertainty_key = self._write_uncertainty(job, report.uncertainty)
            try:
                if layout is not None and spec.output_format == "dicom":
                    output = dicom_job.write_series(
                        self.storage,
                        job,
                        layout,
                        report.image,
                        translator.card.target_modality,
                        tuple(warnings),
                    )
                else:
                    output = self._write_output(job, report.image, tuple(warnings))
            except BaseException:
                self.storage.delete(uncertainty_key)  # no map without its result
                raise
            output = replace(output, quality=dict(report.quality), uncertainty_key=uncertainty_key)
            observe_translation(report, load=load_seconds, write=time.perf_counter() - stage)
            return JobState.SUCCEEDED, None, output
        except TranslationCancelled:
            stopping = self.stopping.is_set() and not deadline.hit
            if stopping and not self.jobs.cancel_requested(job.id):
                return JobState.RUNNING, None, None  # released (see run_job)
            if deadline.hit:
                return (
                    JobState.FAILED,
                    JobError(
                        "timeout",
                        f"the job ran longer than {self.settings.job_timeout_s} s "
                        "(MIDIFF_JOB_TIMEOUT_S) and was stopped",
                    ),
                    None,
                )
            return JobState.CANCELLED, None, None
        except TranslationInputError as exc:
            return JobState.FAILED, JobError("invalid_input", str(exc)), None
        except (DicomRejected, DicomDecodeError) as exc:
            return JobState.FAILED, JobError("invalid_input", str(exc)), None
        except ModelNotFoundError as exc:
            return JobState.FAILED, JobError("model_not_found", str(exc)), None
        except ModelIntegrityError:
            # the registry's message names files on the server: it goes to the log only
            log.exception("job %s: model %s failed its check", job.id, spec.model_name)
            message = (
                f"model {spec.model_name} v{spec.model_version} failed its integrity check (its "
                "weights' sha256 does not match its card, or a file is missing); the operators "
                "must restore or re-import it"
            )
            return JobState.FAILED, JobError("model_integrity", message), None
        except OSError as exc:
            if exc.errno not in NO_ROOM:
                log.exception("job %s failed", job.id)
                return JobState.FAILED, JobError("internal_error", INTERNAL_MESSAGE), None
            log.error("job %s: no room in storage for its output (%s)", job.id, exc.strerror)
            message = (
                "the result could not be written: the server's storage is full; the input is "
                "kept, and the job can be submitted again once there is room"
            )
            return JobState.FAILED, JobError("storage_full", message), None
        except Exception:
            log.exception("job %s failed", job.id)  # the details are for the operators
            return JobState.FAILED, JobError("internal_error", INTERNAL_MESSAGE), None

    def _write_uncertainty(self, job: JobRecord, uncertainty: Any) -> str:
        """The spread between the averaged draws, as NIfTI beside the result (written as
        atomically as the result); returns its key."""
        import nibabel as nib

        key = self.storage.key("out", job.id, ".uncertainty.nii.gz")
        with self.storage.writing_to(key) as partial:
            nib.save(uncertainty, partial)
        return key

    def _load_input(self, key: str) -> Any:
        """The job's stored input; one the gateway passed but nibabel cannot open is the
        input's fault (``invalid_input``), and nibabel's message, naming our file, is not shown."""
        import nibabel as nib

        from midiffusion.pipeline.translate import TranslationInputError

        path = self.storage.path(key)
        if not path.is_file():
            raise TranslationInputError("the job's input is no longer stored; submit it again")
        try:
            return nib.load(path)
        except Exception as exc:
            log.warning("input %s cannot be opened: %s", key, type(exc).__name__)
            raise TranslationInputError(
                "the uploaded file cannot be read as a single-file NIfTI image"
            ) from exc

    def _write_output(self, job: JobRecord, out: Any, warnings: tuple[str, ...]) -> JobOutput:
        import nibabel as nib

        suffix = ".png" if job.spec.output_format == "png" else ".nii.gz"
        key = self.storage.key("out", job.id, suffix)
        with self.storage.writing_to(key) as partial:
            if suffix == ".png":
                from midiffusion.io.imaging import save_png

                data = out.get_fdata()  # the translator's output is already in [0, 1]
                save_png(data.reshape(data.shape[:2]), partial)
            else:
                nib.save(out, partial)
        return JobOutput(
            key=key,
            filename=output_filename(job.spec.input_filename, job.spec.model_name, suffix),
            content_type=CONTENT_TYPES[suffix],
            bytes=self.storage.size(key),
            warnings=warnings,
        )

"""UWS 1.1 asynchronous jobs for TAP /async and /lightcurve/async.

* `models`: phases, `Job`, `Result`, `CancelToken`, the job errors;
* `store`: `JobStoreBase`, what the UWS binding needs from a store;
* `file_store`: `JobStore`, the jobs of one process in ``root/<job_id>/`` (``job.json``,
  uploads, results), run on a thread pool, execution duration enforced by a timer that
  fires the job's `CancelToken`, destruction swept;
* `pg_store`: `PostgresJobStore`, jobs shared by several processes through PostgreSQL
  (psycopg: the ``postgres`` extra; imported only by who uses it);
* `documents`: the UWS XML documents (vo-models);
* `routes`: `uws_routes`, the REST binding of a store.
"""

from .documents import job_xml, jobs_xml
from .file_store import JobStore
from .models import (
    ACTIVE_PHASES,
    PHASES,
    CancelToken,
    ClientQuotaError,
    Job,
    JobLimitError,
    JobNotFoundError,
    JobRunner,
    Result,
)
from .routes import uws_routes
from .store import JobStoreBase

__all__ = [
    "ACTIVE_PHASES",
    "PHASES",
    "CancelToken",
    "ClientQuotaError",
    "Job",
    "JobLimitError",
    "JobNotFoundError",
    "JobRunner",
    "JobStore",
    "JobStoreBase",
    "Result",
    "job_xml",
    "jobs_xml",
    "uws_routes",
]

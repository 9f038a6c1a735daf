"""Background work over the router: a ``Job`` (a handle to wait on, cancel, list) and the
``JobBoard`` of one session. Features (``%%llm --bg``, ``map(background=True)``) start
their work as a Job; ``job.py`` says how."""

from __future__ import annotations

from timmy_magic.jobs.board import JOB_COLUMNS, JobBoard, UnknownJob
from timmy_magic.jobs.job import Job, JobCancelled, JobProgress, JobState, JobTimeout, Work

__all__ = ["JOB_COLUMNS", "Job", "JobBoard", "JobCancelled", "JobProgress", "JobState",
           "JobTimeout", "UnknownJob", "Work"]

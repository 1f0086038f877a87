"""CloudScale: the Django project, its Celery app and cross-cutting plumbing."""

from cloudscale_project.celery import app as celery_app

__all__ = ["celery_app"]

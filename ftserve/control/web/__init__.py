"""The web dashboard: static pages the api role serves at `/`, talking to the public /v1 API."""

from ftserve.control.web.router import install_dashboard

__all__ = ["install_dashboard"]

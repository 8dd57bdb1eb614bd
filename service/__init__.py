"""The HTTP service: deploy-with-agent over the Automation API, a Postgres job queue, workers."""

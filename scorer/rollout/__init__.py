"""Changing models over: plans (direct, shadow, blend, canary), the deployment record, which model scores what."""

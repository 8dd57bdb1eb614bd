"""The droplet's boot script: a jinja2 template and the strict render function in front of it."""

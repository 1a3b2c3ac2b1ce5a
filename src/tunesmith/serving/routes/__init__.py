"""The HTTP routes, one router per resource; `serving.app` assembles them."""

"""The HTTP gateway: FastAPI routers over one engine protocol."""

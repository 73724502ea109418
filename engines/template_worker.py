"""Entry point of a chat-template worker process (see `engines.template_pool`)."""

from engines.template_pool import serve_worker

if __name__ == "__main__":
    serve_worker()

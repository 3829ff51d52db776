"""The ``jetstream`` backend (contract §16): the log on a replicated NATS JetStream stream,
shared by daemons on several hosts. Needs the ``jetstream`` extra (nats-py)."""

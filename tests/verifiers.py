"""Verifiers for the drivers' add(): what gsfs's CommitGuard does, without a mount."""


class RefuseToPublish:
    """A verifier whose last word before publishing is no (gsfs's CommitGuard
    when the writer is being killed)."""

    def update(self, chunk):
        pass

    def before_publish(self):
        raise RuntimeError("refused before publishing")

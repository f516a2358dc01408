"""``Indexable`` as glance_store exports it: an iterator with a known length."""


class Indexable:
    """Wrap an iterator of byte chunks; ``len()`` gives the image size."""

    def __init__(self, wrapped, size):
        self.wrapped = wrapped
        self.size = int(size) if size else (getattr(wrapped, "len", 0) or 0)
        self.cursor = 0
        self.chunk = None

    def __iter__(self):
        return iter(self.wrapped)

    def another(self):
        try:
            self.chunk = next(self.wrapped)
            self.cursor += len(self.chunk)
        except StopIteration:
            self.chunk = None
        return self.chunk

    def __getitem__(self, i):
        start = (i.start or 0) if isinstance(i, slice) else i
        if start < self.cursor:
            return self.chunk[(start - self.cursor):]
        self.chunk = self.another()
        return self.chunk

    def getvalue(self):
        return self.wrapped.getvalue()

    def __len__(self):
        return self.size

    def close(self):
        close = getattr(self.wrapped, "close", None)
        if close is not None:
            close()

"""The gsfs filesystem: one directory per store, one file per image.

Module map (where a syscall is handled and what it becomes):
    operations.py     the pyfuse3 handlers (thin: validate, translate, delegate)
    namespace.py      inode table, listing/attribute cache, pending images
    write_session.py  create/write/flush/fsync → one streaming add(), or a spool file
    read_session.py   open/read → ranged store.read() with readahead and checksumming
    xattrs.py         getxattr/setxattr/listxattr names and values
    errors.py         every store exception → one errno, and the log line
    settings.py       mount options ([gsfs] group and -o)
    daemon.py         mount plumbing: init, signals, shutdown, control channel
"""

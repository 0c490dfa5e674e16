# Sourced by the bench scripts that create and delete many files on the disk.
#
# On an ext4 volume without a journal (this VM's disk), a file created within 30 s of a
# deletion (5 min while the deleted inode is not yet written back) makes the inode allocator
# skip the recently deleted inodes one by one, reading each (`recently_deleted` in
# `find_inode_bit`). The 20,000 files one `upstream.sh` invocation deleted on exit tripled
# the file writer's CPU per edit of the next invocation's run (137 against 441 us). A script
# that deletes many files records when (`deleted_files`), and the next one waits that out
# (`quiet_volume`) before it measures.

# Waits until no deletion recorded under `$1` is recent enough to slow file creation.
quiet_volume() {
  local stamp="$1/bench-files.deleted" wait_s
  [[ -f $stamp ]] || return 0
  # Written back (sync), a deleted inode counts as recent for 30 s.
  sync
  wait_s=$((40 - ($(date +%s) - $(cat "$stamp"))))
  if ((wait_s > 0)); then
    echo "waiting ${wait_s}s: an earlier bench deleted its files on this volume" >&2
    sleep "$wait_s"
  fi
}

# Deletes `$2` and records the time under `$1`.
deleted_files() {
  rm -rf "$2"
  date +%s >"$1/bench-files.deleted"
}

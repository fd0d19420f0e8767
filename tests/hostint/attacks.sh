#!/bin/bash
# Bypass attempts against the protected paths, run as root in the sandbox.
# Every attempt prints "ATTACK <name>: failed" or "ATTACK <name>: SUCCEEDED". An attempt counts
# as succeeded when its whole command chain exits 0; the test also compares the host files.
export W=/workspace
# A separate `bash -e` per attempt: errexit is ignored inside an `if` condition of this shell,
# so a chain would be judged by its last command only.
try() {
    local name=$1
    shift
    if bash -e -c "$*" >/dev/null 2>&1; then echo "ATTACK $name: SUCCEEDED"; else echo "ATTACK $name: failed"; fi
}
open_tree_py='
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
fd = libc.syscall(428, AT_FDCWD, sys.argv[1].encode(), 1 | 0o2000000)  # open_tree(OPEN_TREE_CLONE)
if fd < 0: sys.exit("open_tree: " + os.strerror(ctypes.get_errno()))
os.makedirs("/mnt/ot", exist_ok=True)
if libc.syscall(429, fd, b"", AT_FDCWD, b"/mnt/ot", 4) != 0:  # move_mount(F_EMPTY_PATH)
    sys.exit("move_mount: " + os.strerror(ctypes.get_errno()))
open("/mnt/ot/" + sys.argv[2], "w").write("pwn")
'
export open_tree_py
try write-hook 'echo pwn > $W/.git/hooks/pre-commit'
try new-hook 'echo pwn > $W/.git/hooks/post-checkout'
try write-config 'echo pwn >> $W/.git/config'
try write-vscode 'echo pwn > $W/.vscode/tasks.json'
try write-husky 'echo pwn > $W/.husky/pre-commit'
try commondir-redirect 'echo /tmp/evil > $W/.git/commondir'
try commondir-delete 'rm -f $W/.git/commondir'
try worktree-commondir 'echo /tmp/evil > $W/.git/worktrees/wt/commondir'
try submodule-hook 'echo pwn > $W/.git/modules/sub/hooks/post-checkout'
try submodule-config 'echo pwn >> $W/.git/modules/sub/config'
try dotdot-path 'echo pwn > $W/.git/../.git/hooks/pre-commit'
try chmod-hook 'chmod 777 $W/.git/hooks/pre-commit'
try chown-hook 'chown 0:0 $W/.git/hooks/pre-commit'
try touch-hook 'touch $W/.git/hooks/pre-commit'
try read-secret-file 'grep -q SECRET $W/.env'
try read-secret-dir 'test -e $W/secrets/key.pem'
try write-secret 'echo pwn > $W/.env'
try remount-rw 'mount -o remount,rw $W/.git/hooks'
try remount-bind-rw 'mount -o remount,bind,rw $W/.git/hooks'
try remount-config-rw 'mount -o remount,bind,rw $W/.git/config'
try umount-hooks 'umount $W/.git/hooks'
try umount-lazy-hooks 'umount -l $W/.git/hooks'
try umount-force-hooks 'umount -f $W/.git/hooks'
try umount-config 'umount -l $W/.git/config'
try umount-git 'umount -l $W/.git'
try umount-secret 'umount -l $W/.env'
try move-hooks 'mkdir -p /mnt/mv; mount --move $W/.git/hooks /mnt/mv'
try bind-workspace 'mkdir -p /mnt/b; mount --bind $W /mnt/b; echo pwn > /mnt/b/.git/hooks/pre-commit'
try bind-git 'mkdir -p /mnt/g; mount --bind $W/.git /mnt/g; echo pwn > /mnt/g/hooks/pre-commit'
try rbind-umount 'mkdir -p /mnt/r; mount --rbind $W /mnt/r; umount -l /mnt/r/.git/hooks; echo pwn > /mnt/r/.git/hooks/pre-commit'
try rbind-make-private 'mkdir -p /mnt/p; mount --rbind $W /mnt/p; mount --make-rprivate /mnt/p; umount -l /mnt/p/.git/hooks; echo pwn > /mnt/p/.git/hooks/pre-commit'
try open-tree-clone 'python3 -c "$open_tree_py" $W .git/hooks/pre-commit'
try open-tree-clone-git 'python3 -c "$open_tree_py" $W/.git hooks/pre-commit'
try unshare-umount 'unshare -m sh -c "umount -l $W/.git/hooks; echo pwn > $W/.git/hooks/pre-commit"'
try unshare-remount 'unshare -m sh -c "mount -o remount,bind,rw $W/.git/hooks; echo pwn > $W/.git/hooks/pre-commit"'
try unshare-propagation 'unshare -m --propagation private sh -c "umount -l $W/.git; echo pwn > $W/.git/hooks/pre-commit"'
try unshare-userns 'unshare -Urm sh -c "umount -l $W/.git/hooks; echo pwn > $W/.git/hooks/pre-commit"'
try nsenter-pid1 'nsenter -t 1 -m sh -c "umount -l $W/.git/hooks; echo pwn > $W/.git/hooks/pre-commit"'
try mv-git 'mv $W/.git $W/.git-moved'
try mv-hooks 'mv $W/.git/hooks $W/.git/hooks-moved'
try mv-vscode 'mv $W/.vscode $W/vscode-moved'
try rm-hooks 'rm -rf $W/.git/hooks'
try rm-config 'rm -f $W/.git/config'
try replace-config 'echo pwn > $W/.git/config.new; mv -f $W/.git/config.new $W/.git/config'
try hardlink-hook 'ln $W/.git/hooks/pre-commit $W/hl; echo pwn > $W/hl'
try hardlink-into-hooks 'echo pwn > $W/evil; ln $W/evil $W/.git/hooks/post-merge'
try proc-fd-reopen 'python3 -c "import os; fd=os.open(\"$W/.git/hooks/pre-commit\", os.O_RDONLY); os.write(os.open(\"/proc/self/fd/%d\" % fd, os.O_WRONLY), b\"pwn\")"'
try proc-root-path 'echo pwn > /proc/1/root$W/.git/hooks/pre-commit'
# Last: unmounting the whole workspace is allowed, but reveals only an empty directory.
try umount-workspace 'umount -l $W; echo pwn > $W/.git/hooks/pre-commit'

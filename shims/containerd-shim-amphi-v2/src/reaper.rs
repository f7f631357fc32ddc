//! The shim is a child subreaper: container inits and exec'd processes are
//! re-parented to it when the `amphi` process that made them exits. One
//! thread reaps every child and hands each exit to whoever waits for that
//! pid, whether the waiter came before or after the exit (an `amphi`
//! command can finish before its caller asks).

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::SystemTime;

#[derive(Clone, Copy, Debug)]
pub struct Exit {
    /// The status containerd reports: the exit code, or 128 + signal.
    pub code: u32,
    pub at: SystemTime,
}

#[derive(Default)]
struct Table {
    exits: BTreeMap<i32, Exit>,
    /// Pids whose exit nobody will ask for (e.g. a monitor process).
    ignored: Vec<i32>,
    /// Children spawned so far, so that a spawn between the reaper's
    /// "no children" and its sleep is not missed.
    spawns: u64,
}

pub struct Reaper {
    table: Mutex<Table>,
    changed: Condvar,
    spawned: Condvar,
}

pub static REAPER: Reaper = Reaper {
    table: Mutex::new(Table {
        exits: BTreeMap::new(),
        ignored: Vec::new(),
        spawns: 0,
    }),
    changed: Condvar::new(),
    spawned: Condvar::new(),
};

impl Reaper {
    /// Reap forever (on its own thread).
    pub fn run(&self) -> ! {
        loop {
            let spawns = self.table.lock().unwrap().spawns;
            let mut status = 0;
            // SAFETY: waiting for any child with a valid status pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
            if pid <= 0 {
                // No children right now: sleep until one is spawned.
                let t = self.table.lock().unwrap();
                let _ = self
                    .spawned
                    .wait_timeout_while(t, std::time::Duration::from_secs(1), |t| {
                        t.spawns == spawns
                    })
                    .unwrap();
                continue;
            }
            let code = if libc::WIFSIGNALED(status) {
                128 + libc::WTERMSIG(status) as u32
            } else {
                libc::WEXITSTATUS(status) as u32
            };
            let mut t = self.table.lock().unwrap();
            if let Some(i) = t.ignored.iter().position(|p| *p == pid) {
                t.ignored.swap_remove(i);
                continue;
            }
            t.exits.insert(
                pid,
                Exit {
                    code,
                    at: SystemTime::now(),
                },
            );
            self.changed.notify_all();
        }
    }

    /// A child was just spawned: wake the reaper if it had none.
    pub fn kick(&self) {
        self.table.lock().unwrap().spawns += 1;
        self.spawned.notify_all();
    }

    /// Block until `pid` exits; its exit stays recorded for other waiters
    /// until `forget`.
    pub fn wait(&self, pid: i32) -> Exit {
        let mut t = self.table.lock().unwrap();
        loop {
            if let Some(e) = t.exits.get(&pid) {
                return *e;
            }
            t = self.changed.wait(t).unwrap();
        }
    }

    pub fn exited(&self, pid: i32) -> Option<Exit> {
        self.table.lock().unwrap().exits.get(&pid).copied()
    }

    pub fn forget(&self, pid: i32) {
        self.table.lock().unwrap().exits.remove(&pid);
    }

    /// Drop this pid's exit when it comes (or now, if it came).
    pub fn ignore(&self, pid: i32) {
        let mut t = self.table.lock().unwrap();
        if t.exits.remove(&pid).is_none() {
            t.ignored.push(pid);
        }
    }
}

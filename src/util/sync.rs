//! Locking std mutexes without letting one panic spread.
//!
//! A std `Mutex` is poisoned when a thread panics while holding it, and `lock().expect(..)`
//! then panics in every later caller: one bug in a reload would disable hot reload for good,
//! and a poisoned lock taken in a `Drop` during unwinding aborts the process. [`lock`] takes
//! the guard whether or not the lock is poisoned.
//!
//! That is safe for egressd's data because no critical section leaves a half-made value for
//! the next holder to trip over: each either replaces a value whole (a reload's status, a
//! schedule map rebuilt on a copy and swapped in after it is written), or makes one insert or
//! remove in a map or set (the revocation registry, running schedules, rotation errors), or
//! guards nothing at all (the editor's one-at-a-time lock). After a panic the worst a later
//! holder sees is a value from before the interrupted change, which the next change
//! overwrites.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poison (see the module doc for why that is sound here).
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_value() {
        let mutex = Mutex::new(vec![1]);
        std::thread::scope(|s| {
            let panicked = s
                .spawn(|| {
                    let mut held = mutex.lock().unwrap();
                    held.push(2);
                    panic!("a bug while the lock is held");
                })
                .join();
            assert!(panicked.is_err());
        });
        assert!(mutex.is_poisoned());
        lock(&mutex).push(3);
        assert_eq!(*lock(&mutex), [1, 2, 3]);
    }
}

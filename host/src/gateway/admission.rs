//! A listener's admission: `max_connections` and `max_connections_per_ip`, counted as seats.
//!
//! A seat is taken on accept, before a client is served, and given back when its task ends
//! (so the listener's stop waits for the seats, not for a task set of its own). Refusing on
//! accept (rather than not accepting) gives the refused client an immediate close instead of
//! a hang in the backlog, and never touches the clients already connected.
//!
//! A seat costs an idle connection no bytes: until the client is in (a WebSocket handshake)
//! a [`Seat`] holds it, and from then on its [`super::conn::Connection`], which gives it back
//! with the address the gateway's state keeps for the client anyway. A seat's 32 bytes held
//! beside the connection put its task a 128-byte step of tokio's task alignment higher.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The connections a listener holds, under `max_connections` and `max_connections_per_ip`.
pub struct Admission {
    max: usize,
    /// 0: no cap per address.
    max_per_ip: usize,
    /// Seats taken.
    held: AtomicUsize,
    /// Seats taken by each address, while there is a cap per address.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Woken when the last seat is given back.
    emptied: Notify,
}

/// Why a connection was refused on accept.
pub enum Full {
    /// The listener holds `max_connections`.
    Listener,
    /// The connection's address holds `max_connections_per_ip`.
    Address,
}

/// One connection's seat before its connection takes it over; given back if dropped.
pub struct Seat {
    /// None once handed over.
    admission: Option<Arc<Admission>>,
    ip: IpAddr,
}

impl Admission {
    /// Room for `max` connections at once, at most `max_per_ip` (0: any number) from one
    /// address.
    pub fn new(max: usize, max_per_ip: usize) -> Self {
        Self {
            max,
            max_per_ip,
            held: AtomicUsize::new(0),
            per_ip: Mutex::default(),
            emptied: Notify::new(),
        }
    }

    /// `max_connections`.
    pub fn max(&self) -> usize {
        self.max
    }

    /// `max_connections_per_ip`.
    pub fn max_per_ip(&self) -> usize {
        self.max_per_ip
    }

    /// Seats taken.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// A seat for one more connection from `ip`, if neither cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Seat, Full> {
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.release();
            return Err(Full::Listener);
        }
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = per_ip.entry(ip).or_default();
            if *n >= self.max_per_ip {
                drop(per_ip);
                self.release();
                return Err(Full::Address);
            }
            *n += 1;
        }
        Ok(Seat {
            admission: Some(self.clone()),
            ip,
        })
    }

    /// Gives back the seat of a connection from `ip`, handed over with [`Seat::hand_over`];
    /// `ip` is none only if the connection lost its address, and then only the count per
    /// address keeps the seat.
    pub fn give_back(&self, ip: Option<IpAddr>) {
        if let Some(ip) = ip.filter(|_| self.max_per_ip > 0) {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        self.release();
    }

    fn release(&self) {
        if self.held.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.emptied.notify_waiters();
        }
    }

    /// Resolves once every seat is given back.
    pub async fn emptied(&self) {
        loop {
            let emptied = self.emptied.notified();
            let mut emptied = std::pin::pin!(emptied);
            // Enabled before looking: a last seat given back after the look wakes it.
            emptied.as_mut().enable();
            if self.held() == 0 {
                return;
            }
            emptied.await;
        }
    }
}

impl Seat {
    /// Hands the seat to a connection, which gives it back with [`Admission::give_back`]
    /// when it ends.
    pub fn hand_over(mut self) {
        self.admission = None;
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            admission.give_back(Some(self.ip));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn places_are_refused_past_either_cap_and_given_back_when_dropped() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let admission = Arc::new(Admission::new(2, 1));
        let first = admission.admit(a).ok().expect("room");
        assert!(matches!(admission.admit(a), Err(Full::Address)));
        let bystander = admission.admit(b).ok().expect("another address has room");
        assert!(matches!(admission.admit(b), Err(Full::Listener)));
        drop(first);
        assert!(admission.admit(a).is_ok(), "the seat came back");
        drop(bystander);
        assert_eq!(admission.held(), 0, "refusals hold nothing");
    }

    #[test]
    fn a_seat_handed_over_is_held_until_given_back() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let admission = Arc::new(Admission::new(4, 1));
        admission.admit(a).ok().expect("room").hand_over();
        assert_eq!(admission.held(), 1, "held by its connection");
        assert!(matches!(admission.admit(a), Err(Full::Address)));
        let bystander = admission.admit(b).ok().expect("another address has room");
        admission.give_back(Some(a));
        assert!(admission.admit(a).is_ok(), "the seat came back");
        drop(bystander);
        assert_eq!(admission.held(), 0);
    }

    #[tokio::test]
    async fn a_stopping_listener_waits_for_the_last_place() {
        let admission = Arc::new(Admission::new(4, 0));
        let ip = "10.0.0.1".parse().unwrap();
        let seats = [admission.admit(ip).ok(), admission.admit(ip).ok()];
        let emptied = admission.clone();
        let waiting = tokio::spawn(async move { emptied.emptied().await });
        let [first, second] = seats;
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one client is still closing");
        drop(second);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the last seat")
            .unwrap();
    }
}

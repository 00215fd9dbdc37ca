//! The in-process notifier: anything a `/sync` may be waiting for (a persisted event, an account
//! data write) bumps it, and waiting syncs wake and look again. A second process would be woken
//! through PostgreSQL LISTEN/NOTIFY feeding the same notifier.

use std::sync::Arc;

use tokio::sync::watch;

/// A cheap, clonable change counter that sync waits on.
#[derive(Debug, Clone)]
pub struct Notifier(Arc<watch::Sender<u64>>);

impl Default for Notifier {
    fn default() -> Self {
        Notifier(Arc::new(watch::channel(0).0))
    }
}

impl Notifier {
    /// Wakes every waiting sync.
    pub fn notify(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver whose `changed()` resolves after the next [`Notifier::notify`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

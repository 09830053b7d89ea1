//! The threads connections are served on ("cores"): the runtime that accepts connections and
//! one single-threaded Tokio runtime per extra worker thread.
//!
//! Why not one multi-threaded runtime: there, each wake-up a worker cannot run at once is
//! offered to the others (a futex wake, a steal, a park), and at 2,000 messages per second
//! that doubled the CPU per delivery with a second worker (BENCHMARKS.md). Here a connection
//! lives on one core for its whole life, each core parks in its own `epoll`, and nothing is
//! stolen. A connection is handed, once, to the core with the fewest connections; the accept
//! loop's own core takes its share without a hand-over.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The cores of one listener.
pub struct Cores {
    /// Index 0 is the accept loop's own runtime; the others run on their own threads.
    cores: Vec<Core>,
    /// Ends the extra cores' threads.
    stop: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

struct Core {
    /// `None`: the accept loop's runtime (spawned on directly).
    handle: Option<Handle>,
    /// Connections served here now.
    open: Arc<AtomicUsize>,
}

impl Cores {
    /// Only the accept loop's runtime.
    pub fn single() -> Self {
        Self {
            cores: vec![Core {
                handle: None,
                open: Arc::default(),
            }],
            stop: CancellationToken::new(),
            threads: Vec::new(),
        }
    }

    /// The accept loop's runtime and `count - 1` more, each on a thread of its own.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let mut cores = Self::single();
        for index in 1..count {
            let runtime = Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("sse-core-{index}"))
                .build()?;
            let handle = runtime.handle().clone();
            let stop = cores.stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sse-core-{index}"))
                .spawn(move || {
                    runtime.block_on(stop.cancelled());
                    // Whatever is left (connections past the grace period) is dropped here.
                    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                });
            match thread {
                Ok(thread) => cores.threads.push(thread),
                Err(e) => {
                    cores.stop.cancel();
                    return Err(e);
                }
            }
            cores.cores.push(Core {
                handle: Some(handle),
                open: Arc::default(),
            });
        }
        Ok(cores)
    }

    /// Serves `stream` on the core with the fewest connections, with the future `serve`
    /// makes of it (here, at once: the future alone lives on the core, not the closure),
    /// tracked by `tracker`. [`Incoming::register`] gives the future the stream on its core.
    pub fn spawn<F, Fut>(&self, tracker: &TaskTracker, stream: TcpStream, serve: F)
    where
        F: FnOnce(Incoming, Counted) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let core = self
            .cores
            .iter()
            .min_by_key(|core| core.open.load(Ordering::Relaxed))
            .unwrap_or(&self.cores[0]);
        let counted = Counted::new(core.open.clone());
        match &core.handle {
            None => {
                tracker.spawn(serve(Incoming::Here(stream), counted));
            }
            Some(handle) => match stream.into_std() {
                Ok(stream) => {
                    handle.spawn(tracker.track_future(serve(Incoming::Moved(stream), counted)));
                }
                Err(e) => tracing::debug!(error = %e, "cannot hand a connection to its core"),
            },
        }
    }

    /// Connections served on each core now (the accept loop's first).
    pub fn load(&self) -> Vec<usize> {
        self.cores
            .iter()
            .map(|core| core.open.load(Ordering::Relaxed))
            .collect()
    }

    /// The counters behind [`Cores::load`], for `/metrics`.
    pub fn counters(&self) -> Vec<Arc<AtomicUsize>> {
        self.cores.iter().map(|core| core.open.clone()).collect()
    }

    /// Ends the extra cores' threads (once their connections are done) and waits for them.
    pub async fn stop(self) {
        self.stop.cancel();
        let threads = self.threads;
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        let _ = joined.await;
    }
}

/// An accepted connection on its way to its core.
pub enum Incoming {
    /// Registered with the accept loop's runtime, which serves it.
    Here(TcpStream),
    /// Taken out of the accept loop's reactor, to be registered with its core's.
    Moved(std::net::TcpStream),
}

impl Incoming {
    /// The stream, registered with the runtime this is called on (its core's).
    pub fn register(self) -> std::io::Result<TcpStream> {
        match self {
            Incoming::Here(stream) => Ok(stream),
            Incoming::Moved(stream) => TcpStream::from_std(stream),
        }
    }
}

/// One connection counted on its core while it lives.
pub struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_the_least_loaded_core_and_run_there() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cores = Cores::start(3).unwrap();
        let tracker = TaskTracker::new();
        let release = CancellationToken::new();
        let (names, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (stream, _) = listener.accept().await.unwrap();
            let (names, release) = (names.clone(), release.clone());
            cores.spawn(&tracker, stream, move |incoming, counted| async move {
                let _counted = counted;
                let _stream = incoming.register().unwrap();
                let name = std::thread::current().name().map(str::to_owned);
                let _ = names.send(name);
                release.cancelled().await;
            });
        }
        let mut threads = Vec::new();
        for _ in 0..6 {
            threads.push(seen.recv().await.unwrap());
        }
        assert_eq!(cores.load(), [2, 2, 2]);
        for index in 1..3 {
            let name = format!("sse-core-{index}");
            let on = threads
                .iter()
                .filter(|t| t.as_deref() == Some(&name))
                .count();
            assert_eq!(on, 2, "{threads:?}");
        }
        release.cancel();
        tracker.close();
        tracker.wait().await;
        assert_eq!(cores.load(), [0, 0, 0]);
        cores.stop().await;
    }
}

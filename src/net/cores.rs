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
    /// The connections served here: counted, closed and waited for at shutdown. (A tracker
    /// per core rather than a counter in each connection's future: that future's size is
    /// every idle connection's memory, rounded up to Tokio's 128-byte task cells.)
    tracker: TaskTracker,
}

impl Cores {
    /// Only the accept loop's runtime.
    pub fn single() -> Self {
        Self {
            cores: vec![Core {
                handle: None,
                tracker: TaskTracker::new(),
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
                tracker: TaskTracker::new(),
            });
        }
        Ok(cores)
    }

    /// Serves `stream` on the core with the fewest connections, with the future `serve`
    /// makes of it (here, at once: only the future goes to the core). The stream is
    /// registered with that core's reactor first; one that cannot be is closed.
    pub fn spawn<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let core = self
            .cores
            .iter()
            .min_by_key(|core| core.tracker.len())
            .unwrap_or(&self.cores[0]);
        let Some(handle) = &core.handle else {
            core.tracker.spawn(serve(stream));
            return;
        };
        let moved = stream.into_std().and_then(|stream| {
            let _core = handle.enter();
            TcpStream::from_std(stream)
        });
        match moved {
            Ok(stream) => drop(handle.spawn(core.tracker.track_future(serve(stream)))),
            Err(e) => tracing::debug!(error = %e, "cannot hand a connection to its core"),
        }
    }

    /// Connections served now, all cores together.
    pub fn len(&self) -> usize {
        self.cores.iter().map(|core| core.tracker.len()).sum()
    }

    /// Whether no connection is served now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections served on each core now (the accept loop's first).
    pub fn load(&self) -> Vec<usize> {
        self.cores.iter().map(|core| core.tracker.len()).collect()
    }

    /// The trackers behind [`Cores::load`], for `/metrics`.
    pub fn trackers(&self) -> Vec<TaskTracker> {
        self.cores.iter().map(|core| core.tracker.clone()).collect()
    }

    /// Waits until every connection spawned so far is done (no new ones are taken meanwhile:
    /// the accept loop stopped).
    pub async fn wait(&self) {
        for core in &self.cores {
            core.tracker.close();
            core.tracker.wait().await;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_go_to_the_least_loaded_core_and_run_there() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cores = Cores::start(3).unwrap();
        let release = CancellationToken::new();
        let (names, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (stream, _) = listener.accept().await.unwrap();
            let (names, release) = (names.clone(), release.clone());
            cores.spawn(stream, move |stream| async move {
                // Registered with this thread's reactor: it can be read here.
                let ready = stream.writable().await;
                let name = std::thread::current().name().map(str::to_owned);
                let _ = names.send((name, ready.is_ok()));
                release.cancelled().await;
            });
        }
        let mut threads = Vec::new();
        for _ in 0..6 {
            let (name, ready) = seen.recv().await.unwrap();
            assert!(ready);
            threads.push(name);
        }
        assert_eq!(cores.load(), [2, 2, 2]);
        assert_eq!(cores.len(), 6);
        for index in 1..3 {
            let name = format!("sse-core-{index}");
            let on = threads
                .iter()
                .filter(|t| t.as_deref() == Some(&name))
                .count();
            assert_eq!(on, 2, "{threads:?}");
        }
        release.cancel();
        cores.wait().await;
        assert!(cores.is_empty());
        cores.stop().await;
    }
}

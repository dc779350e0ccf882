//! A steady load for operations tests: paced requests over keep-alive connections plus
//! requests that each open a new connection, counting every failure (connection refused,
//! reset, timeout or a non-2xx status) with a few samples for the failure message.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Counts {
    ok: AtomicUsize,
    failed: AtomicUsize,
    samples: Mutex<Vec<String>>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub struct Summary {
    pub ok: usize,
    pub failed: usize,
    pub samples: Vec<String>,
    pub rate: f64,
}

impl Load {
    /// `rate` requests per second in total against `url`: 80% over keep-alive
    /// connections, 20% each on a fresh connection.
    pub fn start(url: &str, rate: u32) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let keepalive = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client");
        let fresh = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let workers = 64u32;
        let per_worker = Duration::from_secs_f64(workers as f64 / rate as f64);
        let tasks = (0..workers)
            .map(|i| {
                let client = if i % 5 == 4 {
                    fresh.clone()
                } else {
                    keepalive.clone()
                };
                let (stop, counts, url) = (stop.clone(), counts.clone(), url.to_string());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(per_worker);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Relaxed) {
                        tick.tick().await;
                        let res = client.get(&url).send().await;
                        let failure = match res {
                            Ok(r) if r.status().is_success() => match r.bytes().await {
                                Ok(_) => None,
                                Err(e) => Some(format!("body: {e:?}")),
                            },
                            Ok(r) => Some(format!("status {}", r.status())),
                            Err(e) => Some(format!("{e:?}")),
                        };
                        match failure {
                            None => counts.ok.fetch_add(1, Relaxed),
                            Some(f) => {
                                let mut s = counts.samples.lock().unwrap();
                                if s.len() < 5 {
                                    s.push(f);
                                }
                                counts.failed.fetch_add(1, Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            counts,
            tasks,
        }
    }

    pub fn ok(&self) -> usize {
        self.counts.ok.load(Relaxed)
    }

    pub async fn finish(self, elapsed: Duration) -> Summary {
        self.stop.store(true, Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let ok = self.counts.ok.load(Relaxed);
        let failed = self.counts.failed.load(Relaxed);
        Summary {
            ok,
            failed,
            samples: self.counts.samples.lock().unwrap().clone(),
            rate: (ok + failed) as f64 / elapsed.as_secs_f64(),
        }
    }
}

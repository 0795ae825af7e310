//! The processes of one run finding each other before timely starts: saeshare makes the TCP
//! connections itself, with a handshake, and hands the sockets to timely.
//!
//! timely's own start-up reads a bare process index from whatever connects to a listening
//! process, so a stray client (a port scanner, a health check, a process of another run) made
//! it panic. Here every connection opens with a hello that names the protocol, the launch (a
//! digest of what the processes share: the study file, the addresses, the count) and the
//! sender's index; anything else is logged and dropped, and the process waits on for its
//! peers. Process 0 answers each hello with a nonce it drew at start: the run id all processes
//! of this launch share, and no other launch, so that a second launch of the same study on the
//! same hostfile cannot share the run folder's lock with the first.

use std::any::Any;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely::communication::{Hooks, WorkerGuards};
use timely::worker::Worker;

const MAGIC: &[u8; 8] = b"saeshare";
/// The version of the handshake; a process of another version is not a peer.
const PROTOCOL: u32 = 1;
/// Launch digests are this long (hex), padded.
const LAUNCH_BYTES: usize = 32;
const HELLO_BYTES: usize = 8 + 4 + LAUNCH_BYTES + 8 + 8;
const REPLY_BYTES: usize = 8 + 1 + 16;
/// What a reply says: the hello is taken, or why it is refused.
const TAKEN: u8 = 0;
const OTHER_RUN: u8 = 1;
const ALREADY_CONNECTED: u8 = 2;
/// How long a connection may take to say hello before it is dropped.
const HELLO_PATIENCE: Duration = Duration::from_secs(5);
/// How often a process still waiting for its peers says so.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(10);

/// The workers' communication, connected, and the id of the run they make.
pub struct Connected {
    builders: Vec<AllocatorBuilder>,
    others: Box<dyn Any + Send>,
    /// What the processes of this launch share, and no other launch.
    pub run_id: String,
}

impl Connected {
    /// The worker threads of one process alone.
    pub fn single(workers: usize) -> anyhow::Result<Connected> {
        let (builders, others) = timely::CommunicationConfig::Process(workers)
            .try_build()
            .map_err(|e| anyhow::anyhow!("timely could not start its workers: {e}"))?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Connected {
            builders,
            others,
            run_id: format!("{}-{nanos}", std::process::id()),
        })
    }

    /// Process `me` of `addresses.len()` connected to every other, each with `workers`
    /// worker threads; `launch` is what every process of the run computes alike (and another
    /// run would not). Waits, saying so every few seconds, until every peer has connected.
    pub fn cluster(
        addresses: &[String],
        me: usize,
        workers: usize,
        launch: &str,
    ) -> anyhow::Result<Connected> {
        let hello = Hello {
            launch: launch_bytes(launch),
            from: me as u64,
            processes: addresses.len() as u64,
        };
        let nonce: u128 = if me == 0 { rand::random() } else { 0 };
        let listener = bind(&addresses[me], me)?;
        let stop = AtomicBool::new(false);
        let higher = std::thread::scope(|scope| {
            let accepting = scope.spawn(|| accept_peers(&listener, &hello, nonce, &stop));
            let lower = connect_to_lower(addresses, &hello);
            if lower.is_err() {
                // No run to wait for: the accepting thread stops too.
                stop.store(true, Ordering::Relaxed);
            }
            let higher = accepting
                .join()
                .expect("the accepting thread does not panic");
            lower.and_then(|lower| Ok((lower, higher?)))
        });
        drop(listener);
        let ((mut sockets, nonce_of_0), higher) = higher?;
        let nonce = if me == 0 { nonce } else { nonce_of_0 };
        sockets.push(None);
        sockets.extend(higher.into_iter().map(Some));
        tracing::info!(
            "process {me}: connected to the {} other process(es) of the run",
            addresses.len() - 1
        );
        let hooks = Hooks::default();
        let process = ProcessBuilder::new_typed_vector(workers, hooks.refill.clone(), None);
        let (builders, guard) =
            initialize_networking_from_sockets(process, sockets, me, workers, hooks)
                .context("starting timely's communication threads")?;
        Ok(Connected {
            builders: builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
            others: Box::new(guard),
            run_id: format!("{launch}-{nonce:032x}"),
        })
    }

    /// Runs `func` in every worker thread of this process (timely's `execute`).
    pub fn execute<T, F>(self, func: F) -> anyhow::Result<WorkerGuards<T>>
    where
        T: Send + 'static,
        F: Fn(&mut Worker) -> T + Send + Sync + 'static,
    {
        let config = timely::WorkerConfig::default();
        timely::execute::execute_from(self.builders, self.others, config, func)
            .map_err(|e| anyhow::anyhow!("timely could not start its workers: {e}"))
    }
}

/// What a process says first on every connection it opens.
#[derive(Clone, Debug, PartialEq)]
struct Hello {
    launch: [u8; LAUNCH_BYTES],
    from: u64,
    processes: u64,
}

impl Hello {
    fn bytes(&self) -> [u8; HELLO_BYTES] {
        let mut out = [0u8; HELLO_BYTES];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&PROTOCOL.to_le_bytes());
        out[12..12 + LAUNCH_BYTES].copy_from_slice(&self.launch);
        let at = 12 + LAUNCH_BYTES;
        out[at..at + 8].copy_from_slice(&self.from.to_le_bytes());
        out[at + 8..].copy_from_slice(&self.processes.to_le_bytes());
        out
    }

    /// The hello in `bytes`, or why it is none of this run's: the reply's status (for a
    /// saeshare process; `None` for anything else, which gets no reply) and the reason.
    fn read(bytes: &[u8; HELLO_BYTES], mine: &Hello) -> Result<Hello, (Option<u8>, String)> {
        if &bytes[..8] != MAGIC {
            return Err((None, "it is not a saeshare process".to_string()));
        }
        let protocol = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if protocol != PROTOCOL {
            return Err((
                Some(OTHER_RUN),
                format!(
                    "it speaks handshake version {protocol}, this saeshare {PROTOCOL}: run one \
                     saeshare release on every machine"
                ),
            ));
        }
        let at = 12 + LAUNCH_BYTES;
        let hello = Hello {
            launch: bytes[12..at].try_into().expect("sized"),
            from: u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes")),
            processes: u64::from_le_bytes(bytes[at + 8..].try_into().expect("8 bytes")),
        };
        if hello.launch != mine.launch || hello.processes != mine.processes {
            return Err((
                Some(OTHER_RUN),
                "it is a saeshare process of another run (another study file, hostfile or \
                 process count)"
                    .to_string(),
            ));
        }
        if hello.from <= mine.from || hello.from >= mine.processes {
            return Err((
                Some(OTHER_RUN),
                format!(
                    "it says it is process {}, which does not connect to process {}",
                    hello.from, mine.from
                ),
            ));
        }
        Ok(hello)
    }
}

fn launch_bytes(launch: &str) -> [u8; LAUNCH_BYTES] {
    let mut out = [b' '; LAUNCH_BYTES];
    let bytes = launch.as_bytes();
    let n = bytes.len().min(LAUNCH_BYTES);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

fn bind(address: &str, me: usize) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(address).with_context(|| {
        format!(
            "process {me} cannot listen at {address} (its line of the hostfile); is another \
             run's process using the port? Give this run other ports"
        )
    })?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("listening at {address}"))?;
    Ok(listener)
}

/// Accepts a connection from every higher process, in index order; drops (and logs, at most
/// every few seconds) any connection that is not one of them, and refuses a second process
/// with the index of one already connected (another launch of the same study).
fn accept_peers(
    listener: &TcpListener,
    mine: &Hello,
    nonce: u128,
    stop: &AtomicBool,
) -> anyhow::Result<Vec<TcpStream>> {
    let me = mine.from;
    let expected = (mine.processes - me - 1) as usize;
    let mut peers: Vec<Option<TcpStream>> = (0..expected).map(|_| None).collect();
    let mut said = Instant::now();
    let mut dropped = Dropped::default();
    while peers.iter().any(Option::is_none) {
        anyhow::ensure!(
            !stop.load(Ordering::Relaxed),
            "process {me}: stopped waiting for its peers"
        );
        match listener.accept() {
            Ok((stream, from)) => match greet(stream, mine, nonce, &peers) {
                Ok((hello, stream)) => {
                    peers[(hello.from - me - 1) as usize] = Some(stream);
                }
                Err(why) => dropped.log(me, from, &why),
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if said.elapsed() >= WAITING_LOG_EVERY {
                    let waiting: Vec<String> = (peers.iter().enumerate())
                        .filter(|(_, p)| p.is_none())
                        .map(|(i, _)| (me as usize + 1 + i).to_string())
                        .collect();
                    tracing::info!(
                        "process {me}: waiting for process(es) {} to connect",
                        waiting.join(", ")
                    );
                    said = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).context("accepting the run's processes"),
        }
    }
    Ok(peers
        .into_iter()
        .map(|p| p.expect("all connected"))
        .collect())
}

/// Connections dropped at a listening process, said at most every few seconds.
#[derive(Default)]
struct Dropped {
    since_said: usize,
    said: Option<Instant>,
}

impl Dropped {
    fn log(&mut self, me: u64, from: std::net::SocketAddr, why: &str) {
        self.since_said += 1;
        if self.said.is_some_and(|t| t.elapsed() < WAITING_LOG_EVERY) {
            return;
        }
        tracing::warn!(
            "process {me}: a connection from {from} was dropped: {why}; still waiting for this \
             run's processes ({} connection(s) dropped since the last such line)",
            self.since_said
        );
        self.since_said = 0;
        self.said = Some(Instant::now());
    }
}

/// Reads a hello on an accepted connection and answers it: the peer, or why it is none (a
/// saeshare process refused is told why, so that it stops rather than tries again).
fn greet(
    mut stream: TcpStream,
    mine: &Hello,
    nonce: u128,
    peers: &[Option<TcpStream>],
) -> Result<(Hello, TcpStream), String> {
    let io = |e: std::io::Error| format!("it said no hello ({e})");
    stream.set_nonblocking(false).map_err(io)?;
    stream.set_read_timeout(Some(HELLO_PATIENCE)).map_err(io)?;
    let mut bytes = [0u8; HELLO_BYTES];
    stream.read_exact(&mut bytes).map_err(io)?;
    let mut reply = [0u8; REPLY_BYTES];
    reply[..8].copy_from_slice(MAGIC);
    let checked = Hello::read(&bytes, mine).and_then(|hello| {
        let slot = (hello.from - mine.from - 1) as usize;
        if peers[slot].is_some() {
            return Err((
                Some(ALREADY_CONNECTED),
                format!(
                    "process {} of this run is connected already: is another launch of the \
                     same study running?",
                    hello.from
                ),
            ));
        }
        Ok(hello)
    });
    match checked {
        Ok(hello) => {
            reply[8] = TAKEN;
            reply[9..].copy_from_slice(&nonce.to_le_bytes());
            stream.write_all(&reply).map_err(io)?;
            stream.set_read_timeout(None).map_err(io)?;
            stream.set_nodelay(true).map_err(io)?;
            Ok((hello, stream))
        }
        Err((status, why)) => {
            if let Some(status) = status {
                reply[8] = status;
                let _ = stream.write_all(&reply);
            }
            Err(why)
        }
    }
}

/// Connects to every lower process, retrying until each answers the hello; returns the
/// connections and process 0's nonce (0 for process 0 itself). A process that refuses the
/// hello (another run's, or this run's with this index taken) is an error: retrying would not
/// change its answer.
fn connect_to_lower(
    addresses: &[String],
    mine: &Hello,
) -> anyhow::Result<(Vec<Option<TcpStream>>, u128)> {
    let me = mine.from as usize;
    let mut streams = Vec::with_capacity(me);
    let mut nonce = 0;
    for (index, address) in addresses.iter().enumerate().take(me) {
        let mut said = Instant::now();
        let (stream, their_nonce) = loop {
            match say_hello(address, mine) {
                Ok(Answer::Taken(stream, nonce)) => break (stream, nonce),
                Ok(Answer::Refused(status)) => anyhow::bail!(
                    "process {me}: process {index} at {address} refused it: {}",
                    match status {
                        ALREADY_CONNECTED => format!(
                            "process {me} of its run is connected already; is another launch \
                             of the same study running?"
                        ),
                        _ => "it belongs to another run; start every process with the same \
                              study file, hostfile and -n, and one saeshare release"
                            .to_string(),
                    }
                ),
                Err(why) => {
                    if said.elapsed() >= WAITING_LOG_EVERY {
                        tracing::info!(
                            "process {me}: waiting for process {index} at {address} ({why})"
                        );
                        said = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        if index == 0 {
            nonce = their_nonce;
        }
        streams.push(Some(stream));
    }
    Ok((streams, nonce))
}

/// What a lower process answered a hello.
enum Answer {
    Taken(TcpStream, u128),
    Refused(u8),
}

fn say_hello(address: &str, mine: &Hello) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    stream.write_all(&mine.bytes())?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reply = [0u8; REPLY_BYTES];
    stream.read_exact(&mut reply)?;
    if &reply[..8] != MAGIC {
        return Err(std::io::Error::other(
            "what answered is not a saeshare process",
        ));
    }
    if reply[8] != TAKEN {
        return Ok(Answer::Refused(reply[8]));
    }
    stream.set_read_timeout(None)?;
    let nonce = u128::from_le_bytes(reply[9..].try_into().expect("16 bytes"));
    Ok(Answer::Taken(stream, nonce))
}

/// Shared with tests: the hello bytes of process `from` of `processes`.
#[cfg(test)]
fn hello_bytes(launch: &str, from: u64, processes: u64) -> [u8; HELLO_BYTES] {
    Hello {
        launch: launch_bytes(launch),
        from,
        processes,
    }
    .bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn free_ports(n: usize) -> Vec<String> {
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect()
    }

    /// Strays at process 0's port (silent, garbage, another run's hello) are dropped; the
    /// processes of the run connect, and share process 0's nonce as their run id.
    #[test]
    fn strays_are_dropped_and_the_processes_share_process_0s_nonce() {
        let addresses = Arc::new(free_ports(3));
        let starts: Vec<_> = (0..3)
            .map(|me| {
                let addresses = addresses.clone();
                std::thread::spawn(move || {
                    if me > 0 {
                        std::thread::sleep(Duration::from_millis(600));
                    }
                    connect_and_close(&addresses, me)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let at = addresses[0].clone();
        let silent = TcpStream::connect(&at).unwrap();
        let mut garbage = TcpStream::connect(&at).unwrap();
        garbage.write_all(&[7u8; HELLO_BYTES]).unwrap();
        let mut other_run = TcpStream::connect(&at).unwrap();
        other_run.write_all(&hello_bytes("launch-b", 1, 3)).unwrap();
        let ids: Vec<String> = starts.into_iter().map(|s| s.join().unwrap()).collect();
        assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
        assert!(ids[0].starts_with("launch-a-"), "{ids:?}");
        drop((silent, garbage, other_run));

        // A second launch draws another nonce.
        let again: Vec<_> = (0..3)
            .map(|me| {
                let addresses = addresses.clone();
                std::thread::spawn(move || connect_and_close(&addresses, me))
            })
            .collect();
        let second: Vec<String> = again.into_iter().map(|s| s.join().unwrap()).collect();
        assert!(second.iter().all(|id| id == &second[0]));
        assert_ne!(second[0], ids[0]);
    }

    /// Process `me` connects, runs no work, and ends; its run id.
    fn connect_and_close(addresses: &[String], me: usize) -> String {
        let connected = Connected::cluster(addresses, me, 1, "launch-a").unwrap();
        let id = connected.run_id.clone();
        // Every worker starts and stops at once: the connections close as timely closes them.
        if let Ok(guards) = connected.execute(|_| ()) {
            drop(guards.join());
        }
        id
    }

    /// A second process with the index of one already connected (another launch of the same
    /// study) is refused and told why; the run's own processes go on.
    #[test]
    fn a_second_process_of_the_same_index_is_refused() {
        let addresses = Arc::new(free_ports(3));
        let start = |me: usize| {
            let addresses = addresses.clone();
            std::thread::spawn(move || connect_and_close(&addresses, me))
        };
        let (zero, one) = (start(0), start(1));
        std::thread::sleep(Duration::from_millis(1500));
        let mut second = TcpStream::connect(&addresses[0]).unwrap();
        second.write_all(&hello_bytes("launch-a", 1, 3)).unwrap();
        let mut reply = [0u8; REPLY_BYTES];
        second.read_exact(&mut reply).unwrap();
        assert_eq!((&reply[..8], reply[8]), (&MAGIC[..], ALREADY_CONNECTED));
        let two = start(2);
        let ids = [zero, one, two].map(|t| t.join().unwrap());
        assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
    }

    #[test]
    fn a_port_in_use_is_an_error_that_names_it() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let addresses = vec![address.clone(), free_ports(1).remove(0)];
        let error = Connected::cluster(&addresses, 0, 1, "l").err().unwrap();
        let message = format!("{error:#}");
        assert!(
            message.contains(&address) && message.contains("other ports"),
            "{message}"
        );
    }
}

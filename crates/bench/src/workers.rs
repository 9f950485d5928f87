//! The workers under test: [`Worker`]s in this process, or worker processes started with
//! the bench's config file (the secret is in a file next to it), logging to that dir. A
//! worker process is this very binary with its hidden `run` subcommand (`wxpush run`'s
//! code), so it cannot be a different build from the bench that measures it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

use super::Plan;
use super::probe::{self, Cpu};
use wxpush::worker::Worker;

pub enum Workers {
    InProcess(Vec<Worker>),
    Processes(Vec<Process>),
}

pub struct Process {
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
}

/// Peak RSS of each worker process, or of the bench process for in-process workers.
#[derive(Debug, Clone)]
pub struct Memory {
    pub scope: &'static str,
    pub peak_rss: Vec<u64>,
}

/// The arguments of a worker process: this binary's hidden `run` (see `main.rs`), logging
/// JSON lines to its log file as `wxpush run` does off a terminal.
pub fn process_args(config: &Path) -> Vec<OsString> {
    vec![
        "run".into(),
        "--config".into(),
        config.into(),
        "--log-format".into(),
        "json".into(),
    ]
}

/// This binary, or `--wrap`'s command with this binary as its last argument.
fn worker_command(exe: &Path, wrap: Option<&str>) -> tokio::process::Command {
    let mut words = wrap.unwrap_or_default().split_whitespace();
    let Some(program) = words.next() else {
        return tokio::process::Command::new(exe);
    };
    let mut command = tokio::process::Command::new(program);
    command.args(words).arg(exe);
    command
}

fn tail(path: &PathBuf, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Workers {
    pub async fn start(plan: &Plan) -> anyhow::Result<Workers> {
        match plan.args.processes {
            None => {
                let mut workers = Vec::new();
                for _ in 0..plan.args.workers {
                    workers.push(Worker::start(plan.config.clone()).await?);
                }
                Ok(Workers::InProcess(workers))
            }
            Some(count) => {
                let exe = std::env::current_exe().context(
                    "cannot find this program's own path to start the worker processes; \
                     use in-process workers (--workers) instead",
                )?;
                let mut processes = Vec::new();
                for i in 0..count {
                    let log = plan.dir.join(format!("worker-{i}.log"));
                    let file = std::fs::File::create(&log)
                        .with_context(|| format!("cannot create {}", log.display()))?;
                    let child = worker_command(&exe, plan.args.wrap.as_deref())
                        .args(process_args(&plan.config_path))
                        .stdin(Stdio::null())
                        .stdout(file.try_clone()?)
                        .stderr(file)
                        .kill_on_drop(true)
                        .spawn()
                        .with_context(|| {
                            format!("cannot start worker process {} run", exe.display())
                        })?;
                    let pid = child.id().context("worker process has no pid")?;
                    processes.push(Process { child, pid, log });
                }
                Ok(Workers::Processes(processes))
            }
        }
    }

    /// Fails when a worker process has exited, with the end of its log.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Workers::Processes(processes) = self {
            for p in processes {
                if let Some(status) = p.child.try_wait()? {
                    anyhow::bail!(
                        "worker process {} exited ({status}); end of {}:\n{}",
                        p.pid,
                        p.log.display(),
                        tail(&p.log, 20)
                    );
                }
            }
        }
        Ok(())
    }

    /// CPU used so far: by the worker processes, or by this whole process.
    pub fn cpu(&self) -> Cpu {
        let own = probe::own_cpu();
        match self {
            Workers::InProcess(_) => own,
            Workers::Processes(processes) => Cpu {
                total_s: processes
                    .iter()
                    .filter_map(|p| probe::process_cpu(p.pid))
                    .sum(),
                emulator_s: own.emulator_s,
                switches: processes
                    .iter()
                    .map(|p| probe::context_switches(Some(p.pid)))
                    .sum(),
            },
        }
    }

    pub fn memory(&self) -> Memory {
        match self {
            Workers::InProcess(_) => Memory {
                scope: "bench process (in-process workers, emulator, publisher and recorded sends)",
                peak_rss: probe::peak_rss(None).into_iter().collect(),
            },
            Workers::Processes(processes) => Memory {
                scope: "each worker process",
                peak_rss: processes
                    .iter()
                    .filter_map(|p| probe::peak_rss(Some(p.pid)))
                    .collect(),
            },
        }
    }

    /// Stops every worker the way an orchestrator does (SIGTERM for processes) and waits.
    pub async fn stop(self) -> anyhow::Result<()> {
        match self {
            Workers::InProcess(workers) => {
                for w in workers {
                    w.shutdown().await?;
                }
            }
            Workers::Processes(processes) => {
                for p in &processes {
                    let _ = std::process::Command::new("kill")
                        .arg("-TERM")
                        .arg(p.pid.to_string())
                        .status();
                }
                for mut p in processes {
                    match tokio::time::timeout(Duration::from_secs(45), p.child.wait()).await {
                        Ok(Ok(status)) if status.success() => {}
                        Ok(Ok(status)) => eprintln!(
                            "warning: worker process {} exited with {status}; see {}",
                            p.pid,
                            p.log.display()
                        ),
                        Ok(Err(e)) => eprintln!("warning: worker process {}: {e}", p.pid),
                        Err(_) => {
                            eprintln!(
                                "warning: worker process {} ignored SIGTERM for 45 s; killed",
                                p.pid
                            );
                            let _ = p.child.kill().await;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

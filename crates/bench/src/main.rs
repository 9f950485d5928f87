//! `wxpush-bench`: a capacity benchmark on the local RabbitMQ and Redis against the WeChat
//! emulator.
//!
//! Two modes:
//! - **bulk** (default): publishes `--events` events (confirmed), then starts the workers on
//!   the full queue and times the drain: sends/s from the first send WeChat accepted to the
//!   last, and from the start of publishing until everything was delivered;
//! - **steady** (`--rate 1000/s`): starts the workers first (warmed up by a few events), then
//!   publishes at a fixed rate, for the latency a message sees under that load.
//!
//! Each event carries a sequence number in `data.order_no` (`<run tag>-<n>`); the emulator
//! records the rendered message with the time it accepted it, so end-to-end latency is that
//! time minus the publish time the bench noted for `n`. Workers run in-process (`--workers`)
//! or as worker processes (`--processes`), each with the config file the bench writes to a
//! temp dir and the app secret in a file. A worker process is this binary started again with
//! its hidden `run` subcommand, which is `wxpush run` (the same library call), so the bench
//! needs no `wxpush` binary next to it and always measures the code it was built with.
//! Everything lives under its own names (`wxpush-bench-<tag>.*` queues,
//! `wxpush-bench-<tag>:` keys) and is deleted afterwards.
//!
//! The bench is its own package (`crates/bench`, not part of the production build):
//! `cargo run --release -p wxpush-bench -- --events 5000`.

mod baseline;
mod emulator;
mod load;
mod probe;
mod report;
mod workers;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeleteOptions;

use clap::{Parser, Subcommand};
use emulator::Emulator;
use report::Report;
use workers::Workers;
use wxpush::broker::publish::Publisher;
use wxpush::broker::{self, topology::Topology};
use wxpush::cli::{CliError, CliResult, progress};
use wxpush::config::{self, Config};
use wxpush::telemetry::LogFormat;
use wxpush::template::Templates;

pub(crate) const BENCH_APPID: &str = "wxbe0c4000000000aa";
const BENCH_SECRET: &str = "bench-secret-not-real";
/// The event type the bench publishes; the config must map it.
pub(crate) const EVENT_TYPE: &str = "order.paid";

/// The config the bench starts from without `--config`: the repository's commented sample,
/// built into the binary so that it runs from any directory (and a rebuild picks up edits).
const EXAMPLE_CONFIG: &str = include_str!("../../../examples/wxpush.toml");

/// What to do when RabbitMQ or Redis is not there.
pub(crate) const START_SERVERS: &str = "The bench needs RabbitMQ and Redis running. To start them on this machine:
  rabbitmq-server -detached && rabbitmqctl await_startup
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no
(`bash scripts/test.sh --services` does both), or point the bench at running servers with WXPUSH_AMQP__URL / WXPUSH_REDIS__URL.";

#[derive(Debug, Parser)]
#[command(
    name = "wxpush-bench",
    version,
    about = "Capacity benchmark of wxpush on the local RabbitMQ and Redis against the WeChat emulator",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Config file to start from; the bench replaces its queue names, key prefix, WeChat URL
    /// and app [default: examples/wxpush.toml, built in]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format of the in-process workers [default: human on a terminal, else json]
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    worker: Option<WorkerCommand>,
    #[command(flatten)]
    bench: BenchArgs,
}

/// The subcommand's arguments are its own, not the bench's (whose options conflict with
/// it), so that `run` takes exactly what `wxpush run` takes.
#[derive(Debug, Subcommand)]
enum WorkerCommand {
    /// A worker process of a `--processes` run: exactly `wxpush run --config FILE`
    #[command(hide = true)]
    Run {
        /// The config file the bench wrote for this run. Required: falling back to
        /// $WXPUSH_CONFIG or ./wxpush.toml, as `wxpush run` does, could start a worker on
        /// real queues.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.worker {
        Some(WorkerCommand::Run { config, log_format }) => {
            wxpush::cli::execute(log_format, async move {
                let loaded = wxpush::cli::load(Some(&config))?;
                Ok(wxpush::worker::run_until_signal(loaded.config).await?)
            })
        }
        None => wxpush::cli::execute(cli.log_format, run(cli.config.as_deref(), cli.bench)),
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Events to deliver
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// In-process workers, each with its own AMQP connection, Redis pool and HTTP client
    #[arg(long, default_value_t = 1, conflicts_with = "processes")]
    pub workers: usize,
    /// Run N worker OS processes (each the same code as `wxpush run`) instead of in-process
    /// workers
    #[arg(long, value_name = "N")]
    pub processes: Option<usize>,
    /// amqp.prefetch of each worker: its messages in flight
    #[arg(long, default_value_t = 256)]
    pub prefetch: u16,
    /// Latency the emulator adds to every WeChat call [default: 0, or as the --mock-url
    /// emulator is]
    #[arg(long, value_parser = humantime::parse_duration)]
    pub latency: Option<Duration>,
    /// Use a running emulator (`wxpush-mock-wechat`, e.g. at http://127.0.0.1:8088) instead
    /// of an in-process one
    #[arg(long, value_name = "URL")]
    pub mock_url: Option<String>,
    /// Also time a plain consume-and-ack loop with the same prefetch and messages: the ceiling
    #[arg(long)]
    pub baseline: bool,
    /// Steady mode: publish at this rate (`1000/s`, `60000/min`) to already running workers
    #[arg(long, value_parser = parse_rate, value_name = "N/s")]
    pub rate: Option<f64>,
    /// Publisher confirms outstanding at once
    #[arg(long, default_value_t = 512)]
    pub publish_window: usize,
    /// Also write the report to FILE as JSON
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Give up when nothing was delivered for this long
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub stall_timeout: Duration,
    /// Keep the bench's queues, Redis keys and temp dir afterwards
    #[arg(long)]
    pub keep: bool,
    /// Start each worker process through this command (split at spaces), for profiling:
    /// `env LD_PRELOAD=… VAR=…` execs the worker in place, so its pid, CPU and RSS are still
    /// the worker's (a wrapper that forks instead, e.g. `valgrind`, is what gets measured)
    #[arg(long, value_name = "COMMAND", requires = "processes")]
    pub wrap: Option<String>,
}

/// `1000/s`, `1000`, `60000/min`, `1000/sec` → events per second.
fn parse_rate(s: &str) -> Result<f64, String> {
    let (number, per) = s.split_once('/').unwrap_or((s, "s"));
    let seconds = match per.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        other => return Err(format!("unknown unit `/{other}`: use N/s or N/min")),
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{number}` is not a number"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err("the rate must be above 0".into());
    }
    Ok(n / seconds)
}

/// What one run is made of, fixed before it starts.
pub(crate) struct Plan {
    pub args: BenchArgs,
    pub tag: String,
    pub prefix: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub config: Config,
}

impl Plan {
    pub fn worker_count(&self) -> usize {
        self.args.processes.unwrap_or(self.args.workers)
    }
}

pub async fn run(file: Option<&Path>, args: BenchArgs) -> CliResult {
    if args.events == 0 || args.workers == 0 || args.processes == Some(0) || args.prefetch == 0 {
        return Err(CliError::Usage(
            "--events, --workers, --processes and --prefetch must be at least 1".into(),
        ));
    }
    // Read before anything is started or written, so a wrong path fails cleanly.
    let base = BaseConfig::read(file)?;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let prefix = format!("wxpush-bench-{tag}");
    let dir = std::env::temp_dir().join(&prefix);
    let secret_file = dir.join("secret");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&secret_file, BENCH_SECRET))
        .map_err(|e| anyhow::anyhow!("cannot write under {}: {e}", dir.display()))?;

    let record = args.events + load::warmup_count(&args);
    let keep = args.keep;
    let json = args.json.clone();
    let emulator = match Emulator::start(args.mock_url.as_deref(), args.latency, record).await {
        Ok(e) => e,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
    };
    let outcome =
        prepare_and_measure(&base, args, tag, prefix, &dir, &secret_file, &emulator).await;
    emulator.shutdown().await;
    if keep || outcome.is_err() {
        eprintln!("the run's config and worker logs are in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = outcome?;
    report.print();
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?;
        std::fs::write(&path, text + "\n")
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

async fn prepare_and_measure(
    base: &BaseConfig,
    args: BenchArgs,
    tag: String,
    prefix: String,
    dir: &Path,
    secret_file: &Path,
    emulator: &Emulator,
) -> anyhow::Result<Report> {
    emulator.register_app(BENCH_APPID, BENCH_SECRET).await?;
    let config_path = dir.join("wxpush.toml");
    let config = write_config(
        base,
        &config_path,
        &prefix,
        &emulator.base_url(),
        secret_file,
        args.prefetch,
    )?;
    let plan = Plan {
        args,
        tag,
        prefix,
        dir: dir.to_path_buf(),
        config_path,
        config,
    };
    let result = measure(&plan, emulator).await;
    if plan.args.keep {
        eprintln!("kept queues {0}.* and Redis keys {0}:*", plan.prefix);
    } else {
        cleanup(&plan).await;
    }
    result
}

/// The config the bench starts from: `--config FILE`, or the built-in example.
struct BaseConfig {
    /// For messages: the file as given, or the example's name.
    origin: String,
    text: String,
}

impl BaseConfig {
    fn read(file: Option<&Path>) -> anyhow::Result<BaseConfig> {
        let Some(file) = file else {
            return Ok(BaseConfig {
                origin: "examples/wxpush.toml (built in)".into(),
                text: EXAMPLE_CONFIG.to_owned(),
            });
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            let cwd = std::env::current_dir().map_or("?".into(), |d| d.display().to_string());
            anyhow::anyhow!(
                "cannot read the --config file {}: {e} (a relative path is taken from the \
                 current directory, {cwd}; without --config the bench uses its built-in \
                 copy of examples/wxpush.toml)",
                file.display()
            )
        })?;
        Ok(BaseConfig {
            origin: file.display().to_string(),
            text,
        })
    }
}

/// Writes the config the workers use: the given file (or the example) with the bench's own
/// queue names, key prefix, emulator, app and prefetch. Returns it as loaded and checked.
fn write_config(
    base: &BaseConfig,
    path: &Path,
    prefix: &str,
    api_base: &str,
    secret_file: &Path,
    prefetch: u16,
) -> anyhow::Result<Config> {
    use toml::{Table, Value};
    let mut root: Table = base
        .text
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", base.origin))?;
    fn section<'a>(root: &'a mut Table, name: &str) -> &'a mut Table {
        let entry = root
            .entry(name)
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        entry.as_table_mut().expect("a table")
    }
    let amqp = section(&mut root, "amqp");
    amqp.insert("exchange".into(), format!("{prefix}.events").into());
    amqp.insert("queue".into(), format!("{prefix}.events").into());
    amqp.insert("dead_letter_queue".into(), format!("{prefix}.dead").into());
    amqp.insert("prefetch".into(), i64::from(prefetch).into());
    amqp.remove("bindings");
    section(&mut root, "redis").insert("key_prefix".into(), prefix.into());
    section(&mut root, "wechat").insert("api_base".into(), api_base.into());
    section(&mut root, "admin").insert("listen".into(), "127.0.0.1:0".into());
    let apps = section(&mut root, "apps");
    if apps.is_empty() {
        apps.insert("default".into(), Value::Table(Table::new()));
    }
    for (_, app) in apps.iter_mut() {
        if let Some(app) = app.as_table_mut() {
            app.insert("appid".into(), BENCH_APPID.into());
            app.remove("secret_env");
            app.insert(
                "secret_file".into(),
                secret_file.display().to_string().into(),
            );
        }
    }
    let text = format!(
        "# Written by `wxpush-bench` for this run only.\n{}",
        toml::to_string(&root)?
    );
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let config = config::load(path)?.config;
    let templates = Templates::compile(&config)?;
    if templates.get(EVENT_TYPE).is_none() {
        anyhow::bail!(
            "the bench publishes `{EVENT_TYPE}` events: the config needs a [[templates]] entry for it"
        );
    }
    Ok(config)
}

/// The run itself; the caller cleans up whatever happens here.
async fn measure(plan: &Plan, emulator: &Emulator) -> anyhow::Result<Report> {
    let args = &plan.args;
    let config = &plan.config;
    let connection = broker::connect_any(&config.amqp, "bench")
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\n{START_SERVERS}"))?;
    let publisher = Publisher::open(&connection).await?;
    Topology::new(&config.amqp, &config.retry)
        .declare(publisher.channel())
        .await?;
    let monitor = connection.create_channel().await?;
    let events = Arc::new(load::events(&plan.tag, "", args.events));
    let mut report = Report::new(plan, emulator);
    // Command counts come from one node: the Redis in single mode, else the first of
    // redis.urls (a seed or a sentinel), so they are partial there.
    let probe_url = match config.redis.mode {
        config::RedisMode::Single => config.redis.url.clone(),
        _ => config.redis.urls.first().cloned().unwrap_or_default(),
    };
    let mut redis = probe::Redis::connect(&probe_url).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to Redis at {}: {e:#}\n{START_SERVERS}",
            config::redact_url(&config.redis.url)
        )
    })?;
    report.machine.redis_version = redis.version().await;
    report.machine.loadavg_start = probe::loadavg();

    if args.baseline {
        report.set_baseline(baseline::run(plan, &events).await?);
    }

    let stats_before = emulator.stats().await?;
    let publish = |events: Arc<Vec<_>>, rate: Option<f64>, what: &'static str| {
        let (publisher, exchange) = (publisher.clone(), config.amqp.exchange.clone());
        let window = args.publish_window;
        async move {
            let bar = progress::bar(events.len() as u64, what);
            load::publish(&publisher, &exchange, None, events, window, rate, &bar).await
        }
    };
    let (workers, published, done, redis_before, cpu_before, others_before) =
        if let Some(rate) = args.rate {
            let mut workers = Workers::start(plan).await?;
            probe::wait_for_consumers(
                &monitor,
                &config.amqp.queue,
                plan.worker_count(),
                &mut workers,
            )
            .await?;
            // Warm-up (tokens, HTTP and Redis connections), not measured.
            let warm = Arc::new(load::events(&plan.tag, "w", load::warmup_count(args)));
            publish(warm.clone(), None, "warming up").await?;
            let target = stats_before.sends_ok + warm.len() as u64;
            probe::wait_until(Duration::from_secs(60), "the warm-up events", async || {
                Ok(emulator.stats().await?.sends_ok >= target)
            })
            .await?;
            let base = emulator.stats().await?.sends_ok;
            let redis_before = redis.commandstats().await?;
            let others_before = (redis.cpu().await, probe::broker_cpu());
            let cpu_before = workers.cpu();
            let task = tokio::spawn(publish(events.clone(), Some(rate), "publishing"));
            let done = probe::wait_done(plan, emulator, &monitor, &mut workers, base).await;
            let published = task.await??;
            (
                workers,
                published,
                done?,
                redis_before,
                cpu_before,
                others_before,
            )
        } else {
            let redis_before = redis.commandstats().await?;
            let published = publish(events.clone(), None, "publishing").await?;
            let others_before = (redis.cpu().await, probe::broker_cpu());
            let cpu_before = match args.processes {
                Some(_) => probe::Cpu {
                    total_s: 0.0,
                    emulator_s: probe::own_cpu().emulator_s,
                    switches: 0,
                },
                None => probe::own_cpu(),
            };
            let mut workers = Workers::start(plan).await?;
            let base = stats_before.sends_ok;
            let done = probe::wait_done(plan, emulator, &monitor, &mut workers, base).await?;
            (
                workers,
                published,
                done,
                redis_before,
                cpu_before,
                others_before,
            )
        };
    let cpu_after = workers.cpu();
    let others_after = (redis.cpu().await, probe::broker_cpu());
    report.set_resources(workers.memory(), cpu_before, cpu_after, args.events);
    report.set_other_cpu(others_before, others_after);
    workers.stop().await?;
    let redis_after = redis.commandstats().await?;
    report.set_redis(&redis_before, &redis_after);
    report.set_emulator(&stats_before, &emulator.stats().await?);
    let sends = emulator.sends().await?;
    report.set_outcome(&plan.tag, &published, &done, &sends);
    report.machine.loadavg_end = probe::loadavg();
    let _ = connection.close(200, "bench done".into()).await;
    Ok(report)
}

/// Deletes the bench's queues, exchange and Redis keys.
async fn cleanup(plan: &Plan) {
    let config = &plan.config;
    let topology = Topology::new(&config.amqp, &config.retry);
    if let Ok(connection) = broker::connect_any(&config.amqp, "bench cleanup").await
        && let Ok(channel) = connection.create_channel().await
    {
        let queues = [
            topology.queue.clone(),
            topology.dead_letter_queue.clone(),
            baseline::queue_name(plan),
        ]
        .into_iter()
        .chain(topology.tiers.iter().map(|t| t.queue.clone()));
        for queue in queues {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(topology.exchange.as_str().into(), Default::default())
            .await;
        let _ = connection.close(200, "bench cleanup done".into()).await;
    }
    let deleted = match config.redis.mode {
        config::RedisMode::Single => {
            probe::delete_keys(&config.redis.url, &config.redis.key_prefix).await
        }
        // Each master's keys, key by key (see store::delete_prefix).
        _ => match wxpush::store::pooled(&config.redis) {
            Ok(pool) => wxpush::store::delete_prefix(&pool, &config.redis.key_prefix)
                .await
                .map(drop),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = deleted {
        eprintln!(
            "warning: could not delete Redis keys {}:*: {e}",
            config.redis.key_prefix
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("1000/s"), Ok(1000.0));
        assert_eq!(parse_rate("250"), Ok(250.0));
        assert_eq!(parse_rate("60000/min"), Ok(1000.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("5/h").is_err());
    }

    /// A `--processes` run starts this binary with `workers::process_args`: the parser must
    /// take them as the worker subcommand (bench options conflict with it).
    #[test]
    fn worker_processes_parse_as_the_run_subcommand() {
        let args = workers::process_args(Path::new("/tmp/x/wxpush.toml"));
        let cli = Cli::try_parse_from(std::iter::once("wxpush-bench".into()).chain(args))
            .expect("the worker process's arguments parse");
        match cli.worker {
            Some(WorkerCommand::Run { config, log_format }) => {
                assert_eq!(config, Path::new("/tmp/x/wxpush.toml"));
                assert_eq!(log_format, Some(LogFormat::Json));
            }
            None => panic!("parsed as a bench run, not as a worker"),
        }
        // A worker never falls back to $WXPUSH_CONFIG or ./wxpush.toml.
        assert!(Cli::try_parse_from(["wxpush-bench", "run"]).is_err());
        assert!(Cli::try_parse_from(["wxpush-bench", "--events", "5", "run"]).is_err());
    }

    /// Without --config the bench runs from any directory on the built-in example.
    #[test]
    fn the_built_in_example_config_maps_the_bench_event() {
        let base = BaseConfig::read(None).unwrap();
        let dir = std::env::temp_dir().join(format!("wxpush-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let secret = dir.join("secret");
        std::fs::write(&secret, BENCH_SECRET).unwrap();
        let config = write_config(
            &base,
            &dir.join("wxpush.toml"),
            "wxpush-bench-test",
            "http://127.0.0.1:9",
            &secret,
            64,
        );
        let _ = std::fs::remove_dir_all(&dir);
        let config = config.unwrap();
        assert_eq!(config.amqp.queue, "wxpush-bench-test.events");
        assert_eq!(config.amqp.prefetch, 64);
        assert_eq!(config.wechat.api_base, "http://127.0.0.1:9");

        let missing = BaseConfig::read(Some(Path::new("no/such/wxpush.toml")));
        let message = missing.err().unwrap().to_string();
        assert!(
            message.contains("cannot read the --config file no/such/wxpush.toml")
                && message.contains("built-in copy of examples/wxpush.toml"),
            "{message}"
        );
    }
}

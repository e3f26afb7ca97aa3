//! `--vs-bullmq`: runs this suite and BullMQ's harness alternately (`--reps` times each, each
//! on a fresh redis-server of the same build), then prints the comparable figures side by
//! side: medians over the repetitions and their ratio.

use serde_json::{Map, Value, json};

use super::stats::{median, round};
use super::{BenchArgs, bullmq, outcome, print_table, suite, usage};
use crate::cli;

/// Which way a figure is better.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// One comparable figure: where it is in our lines and in BullMQ's summary.
struct Figure {
    key: &'static str,
    label: &'static str,
    better: Better,
    /// From our scenario lines.
    ours: fn(&[Value]) -> Option<f64>,
    /// From BullMQ's summary.
    theirs: fn(&Value) -> Option<f64>,
}

fn at(v: &Value, pointer: &str) -> Option<f64> {
    v.pointer(pointer).and_then(Value::as_f64)
}

/// A figure of our line of `scenario`.
fn line(lines: &[Value], scenario: &str, pointer: &str) -> Option<f64> {
    at(lines.iter().find(|l| l["scenario"] == scenario)?, pointer)
}

const E2E: &str = "/b_e2e/worker_child_process.produce_and_consume/median";
const E2E_PRIORITY: &str = "/b_e2e/worker_child_process.produce_and_consume.priority_1to9/median";

/// Redis CPU µs per job: the cores Redis used over the window divided by the jobs per second.
fn redis_us_per_job(v: &Value) -> Option<f64> {
    let cores = at(v, &format!("{E2E}/cpu/redis_cores"))?;
    let jobs_per_s = at(v, &format!("{E2E}/jobs_per_s"))?;
    (jobs_per_s > 0.0).then(|| cores / jobs_per_s * 1e6)
}

const FIGURES: &[Figure] = &[
    Figure {
        key: "end_to_end_jobs_per_s",
        label: "end to end, jobs/s (worker in a 2nd process)",
        better: Better::Higher,
        ours: |l| line(l, "end_to_end", "/jobs_per_s"),
        theirs: |v| at(v, &format!("{E2E}/jobs_per_s")),
    },
    Figure {
        key: "end_to_end_priorities_jobs_per_s",
        label: "end to end with priorities, jobs/s",
        better: Better::Higher,
        ours: |l| line(l, "end_to_end_mixed_tiers_priorities", "/jobs_per_s"),
        theirs: |v| at(v, &format!("{E2E_PRIORITY}/jobs_per_s")),
    },
    Figure {
        key: "drain_jobs_per_s",
        label: "drain of a preloaded queue, jobs/s",
        better: Better::Higher,
        ours: |l| line(l, "drain", "/jobs_per_s"),
        theirs: |v| {
            at(
                v,
                "/b_e2e/worker_child_process.drain_preloaded/median/jobs_per_s",
            )
        },
    },
    Figure {
        key: "submit_batch_jobs_per_s",
        label: "submit, batches of 1,000 (addBulk), jobs/s",
        better: Better::Higher,
        ours: |l| line(l, "submit_batch_1000", "/jobs_per_s"),
        theirs: |v| at(v, "/a_enqueue/addBulk/median/jobs_per_s"),
    },
    Figure {
        key: "submit_50_in_flight_jobs_per_s",
        label: "submit, 50 calls in flight, jobs/s",
        better: Better::Higher,
        ours: |l| line(l, "submit_50_in_flight", "/jobs_per_s"),
        theirs: |v| at(v, "/a_enqueue/add_inflight/median/jobs_per_s"),
    },
    Figure {
        key: "submit_one_at_a_time_jobs_per_s",
        label: "submit, one call at a time, jobs/s",
        better: Better::Higher,
        ours: |l| line(l, "submit_one_at_a_time", "/jobs_per_s"),
        theirs: |v| at(v, "/a_enqueue/add_sequential/median/jobs_per_s"),
    },
    Figure {
        key: "redis_commands_per_job",
        label: "Redis commands per job, end to end (incl. in scripts)",
        better: Better::Lower,
        ours: |l| line(l, "end_to_end", "/redis_commands_per_job"),
        theirs: |v| at(v, &format!("{E2E}/server_cmds_per_job")),
    },
    Figure {
        key: "redis_commands_per_job_priorities",
        label: "same, with priorities",
        better: Better::Lower,
        ours: |l| {
            line(
                l,
                "end_to_end_mixed_tiers_priorities",
                "/redis_commands_per_job",
            )
        },
        theirs: |v| at(v, &format!("{E2E_PRIORITY}/server_cmds_per_job")),
    },
    Figure {
        key: "redis_round_trips_per_job",
        label: "Redis round trips per job (client-issued commands)",
        better: Better::Lower,
        ours: |l| line(l, "end_to_end", "/redis_client_commands_per_job"),
        theirs: |v| at(v, &format!("{E2E}/client_cmds_per_job")),
    },
    Figure {
        key: "redis_cpu_us_per_job",
        label: "Redis CPU per job, end to end, µs",
        better: Better::Lower,
        // ms per 10,000 jobs, divided by 10: µs per job.
        ours: |l| line(l, "end_to_end", "/redis_cpu_ms_per_10k_jobs").map(|ms| ms / 10.0),
        theirs: redis_us_per_job,
    },
    Figure {
        key: "submit_to_worker_p50_ms",
        label: "submit -> worker p50, ms",
        better: Better::Lower,
        ours: |l| line(l, "submit_to_worker_latency_ms", "/p50"),
        theirs: |v| {
            at(
                v,
                "/c_latency/worker_child_process/median/add_to_processor_start/p50_ms",
            )
        },
    },
    Figure {
        key: "submit_to_worker_p95_ms",
        label: "submit -> worker p95, ms",
        better: Better::Lower,
        ours: |l| line(l, "submit_to_worker_latency_ms", "/p95"),
        theirs: |v| {
            at(
                v,
                "/c_latency/worker_child_process/median/add_to_processor_start/p95_ms",
            )
        },
    },
    Figure {
        key: "submit_to_worker_p99_ms",
        label: "submit -> worker p99, ms",
        better: Better::Lower,
        ours: |l| line(l, "submit_to_worker_latency_ms", "/p99"),
        theirs: |v| {
            at(
                v,
                "/c_latency/worker_child_process/median/add_to_processor_start/p99_ms",
            )
        },
    },
    Figure {
        key: "progress_p50_ms",
        label: "progress event p50, ms (WatchJob vs QueueEvents)",
        better: Better::Lower,
        ours: |l| line(l, "progress_latency_ms", "/p50"),
        theirs: |v| at(v, "/d_progress/median/progress_event_delay/p50_ms"),
    },
    Figure {
        key: "progress_p99_ms",
        label: "progress event p99, ms",
        better: Better::Lower,
        ours: |l| line(l, "progress_latency_ms", "/p99"),
        theirs: |v| at(v, "/d_progress/median/progress_event_delay/p99_ms"),
    },
    Figure {
        key: "redis_bytes_per_waiting_job",
        label: "Redis bytes per waiting job (used_memory)",
        better: Better::Lower,
        ours: |l| line(l, "redis_bytes_per_waiting_job", "/bytes_per_job"),
        theirs: |v| at(v, "/memory/bytes_per_job"),
    },
    Figure {
        key: "idle_commands_per_min",
        label: "idle Redis commands/min (4 workers, 10 watches vs Worker+QueueEvents)",
        better: Better::Lower,
        ours: |l| line(l, "idle_redis_commands_per_minute", "/commands_per_min"),
        theirs: |v| at(v, "/e_idle/server_cmds_per_min"),
    },
];

pub async fn run(args: &BenchArgs) -> cli::Outcome {
    let peer = bullmq::prepare(&args.bullmq_dir).await?;
    let configuration = match args.with_keys() {
        true => format!(
            "API keys on, history in a fresh database on {}",
            args.database()
        ),
        false => "Redis only: no API keys, no database (secondary figures)".to_string(),
    };
    eprintln!("Conveyor runs with {configuration}, default limits");
    let (mut conveyor, mut bullmq, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    let mut loads = Vec::new();
    for rep in 1..=args.reps {
        eprintln!("== rep {rep}/{}: Conveyor", args.reps);
        let lines = suite(args, args.with_keys()).await?;
        print_table(&lines);
        let load: Vec<f64> = lines.iter().filter_map(|l| l["load_1m"].as_f64()).collect();
        conveyor.push(lines);
        eprintln!(
            "== rep {rep}/{}: BullMQ (its progress on stderr)",
            args.reps
        );
        let scratch = std::env::temp_dir().join(format!(
            "conveyor-bench-bullmq-{}-{rep}",
            std::process::id()
        ));
        match peer.run(args, &scratch).await {
            Ok(summary) => bullmq.push(summary),
            Err(e) => {
                eprintln!("BullMQ rep {rep}: {e}");
                errors.push(format!("rep {rep}: {e}"));
            }
        }
        let rep_load = json!({"rep": rep, "conveyor_load_1m_by_scenario": load,
                              "bullmq_load_1m_after": super::load_average()});
        eprintln!("load average (1 min) in rep {rep}: {rep_load}");
        loads.push(rep_load);
    }
    let figures = side_by_side(&conveyor, &bullmq, args.reps);
    let line = json!({
        "scenario": "vs_bullmq", "reps": args.reps, "configuration": configuration,
        "bullmq_runs": bullmq.len(),
        "bullmq_versions": bullmq.first().map(|s| s["versions"].clone()),
        "bullmq_errors": errors, "load": loads, "figures": figures,
    });
    println!("{line}");
    if !errors.is_empty() {
        return Err(usage("a BullMQ run failed; see bullmq_errors"));
    }
    Ok(outcome(&conveyor.concat()))
}

/// Prints the table of medians and ratios, and returns the same as JSON by figure.
fn side_by_side(conveyor: &[Vec<Value>], bullmq: &[Value], reps: u32) -> Map<String, Value> {
    let mut figures = Map::new();
    eprintln!(
        "\n{:<56} {:>12} {:>12} {:>8}  (medians of {} reps)",
        "figure", "Conveyor", "BullMQ", "ratio", reps
    );
    for f in FIGURES {
        let ours = median(conveyor.iter().filter_map(|lines| (f.ours)(lines)));
        let theirs = median(bullmq.iter().filter_map(|s| (f.theirs)(s)));
        let ratio = match (ours, theirs) {
            (Some(o), Some(t)) if t != 0.0 => Some(round(o / t, 2)),
            _ => None,
        };
        let better = match f.better {
            Better::Higher => "higher",
            Better::Lower => "lower",
        };
        let show = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{}", round(v, 2)));
        eprintln!(
            "{:<56} {:>12} {:>12} {:>8}  {better} is better",
            f.label,
            show(ours),
            show(theirs),
            show(ratio)
        );
        figures.insert(
            f.key.into(),
            json!({"conveyor": ours.map(|v| round(v, 3)), "bullmq": theirs.map(|v| round(v, 3)),
                   "ratio": ratio, "better": better}),
        );
    }
    eprintln!("ratio = Conveyor / BullMQ; n/a = not measured (see each side's output)");
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of BullMQ's BENCH_SUMMARY (results/bullmq-6.7.0-run9.stdout.txt), cut down.
    fn bullmq_summary() -> Value {
        let e2e = json!({"median": {"jobs_per_s": 8000.0, "server_cmds_per_job": 33.0,
            "client_cmds_per_job": 2.0, "cpu": {"redis_cores": 0.7}}});
        let latency = json!({"p50_ms": 0.5, "p95_ms": 1.0, "p99_ms": 2.0});
        json!({
            "a_enqueue": {"addBulk": {"median": {"jobs_per_s": 1.0}},
                "add_sequential": {"median": {"jobs_per_s": 1.0}},
                "add_inflight": {"median": {"jobs_per_s": 1.0}}},
            "b_e2e": {"worker_child_process.produce_and_consume": e2e,
                "worker_child_process.produce_and_consume.priority_1to9": e2e,
                "worker_child_process.drain_preloaded": e2e},
            "c_latency": {"worker_child_process": {"median": {"add_to_processor_start": latency}}},
            "d_progress": {"median": {"progress_event_delay": latency}},
            "e_idle": {"server_cmds_per_min": 116.0},
            "memory": {"bytes_per_job": 178.0},
        })
    }

    fn our_lines() -> Vec<Value> {
        let figures = json!({"jobs_per_s": 1.0, "redis_commands_per_job": 1.0,
            "redis_client_commands_per_job": 1.0, "redis_cpu_ms_per_10k_jobs": 1.0,
            "p50": 1.0, "p95": 1.0, "p99": 1.0, "commands_per_min": 1.0, "bytes_per_job": 1.0});
        [
            "submit_one_at_a_time",
            "submit_50_in_flight",
            "submit_batch_1000",
            "end_to_end",
            "end_to_end_mixed_tiers_priorities",
            "drain",
            "submit_to_worker_latency_ms",
            "progress_latency_ms",
            "idle_redis_commands_per_minute",
            "redis_bytes_per_waiting_job",
        ]
        .into_iter()
        .map(|s| {
            let mut line = figures.clone();
            line["scenario"] = json!(s);
            line
        })
        .collect()
    }

    #[test]
    fn every_figure_is_found_on_both_sides() {
        let (summary, lines) = (bullmq_summary(), our_lines());
        for f in FIGURES {
            assert!((f.theirs)(&summary).is_some(), "BullMQ's {}", f.key);
            assert!((f.ours)(&lines).is_some(), "our {}", f.key);
        }
        let us_per_job = redis_us_per_job(&summary).unwrap();
        assert!((us_per_job - 87.5).abs() < 1e-9);
    }

    #[test]
    fn a_failed_phase_is_not_a_figure() {
        let summary = json!({"b_e2e": {"worker_child_process.produce_and_consume":
            {"median": {"error": "timeout"}}}});
        assert!(FIGURES.iter().all(|f| (f.theirs)(&summary).is_none()));
    }
}

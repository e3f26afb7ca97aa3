//! The two text formats `/metrics` speaks: OpenMetrics, which the registry writes and Prometheus
//! asks for, and the classic Prometheus exposition (0.0.4), which every other scraper and a
//! plain `curl` get. They differ in how families are named: a counter family `x` with samples
//! `x_total` in OpenMetrics is the family `x_total` in the classic format, an info family `x` is
//! the gauge `x_info`, and OpenMetrics' `# UNIT` and `# EOF` lines do not exist there.

/// The content types of the two formats.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` header asks for OpenMetrics (Prometheus does, by default).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|media| {
            let mut parts = media.split(';').map(str::trim);
            let named = parts.next() == Some("application/openmetrics-text");
            // `q=0` means "not this one".
            named && !parts.any(|p| p.replace(' ', "") == "q=0")
        })
    })
}

/// OpenMetrics text as the classic exposition.
pub fn classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's HELP comes before its TYPE, which decides its classic name.
    let mut help: Option<(&str, &str)> = None;
    let mut counter: Option<String> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_string(), kind),
                _ => (name.to_string(), "untyped"),
            };
            counter = (kind == "counter").then(|| rest.split(' ').next().unwrap_or("").into());
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with('#') {
            continue; // # UNIT, # EOF
        }
        // A counter's creation time has no place in the classic format.
        if let Some(family) = &counter
            && line
                .strip_prefix(family.as_str())
                .is_some_and(|rest| rest.starts_with("_created"))
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OM: &str = "# HELP conveyor_jobs_submitted Jobs accepted.\n\
        # TYPE conveyor_jobs_submitted counter\n\
        conveyor_jobs_submitted_total{queue=\"q\"} 2\n\
        conveyor_jobs_submitted_created{queue=\"q\"} 1.7e9\n\
        # HELP conveyor_queue_oldest_wait_seconds Longest wait.\n\
        # TYPE conveyor_queue_oldest_wait_seconds gauge\n\
        # UNIT conveyor_queue_oldest_wait_seconds seconds\n\
        conveyor_queue_oldest_wait_seconds{queue=\"q\"} 0.5\n\
        # HELP conveyor_build Build.\n\
        # TYPE conveyor_build info\n\
        conveyor_build_info{version=\"0.1.0\"} 1\n\
        # EOF\n";

    #[test]
    fn families_get_their_classic_names_and_om_only_lines_go() {
        let text = classic(OM);
        assert_eq!(
            text,
            "# HELP conveyor_jobs_submitted_total Jobs accepted.\n\
             # TYPE conveyor_jobs_submitted_total counter\n\
             conveyor_jobs_submitted_total{queue=\"q\"} 2\n\
             # HELP conveyor_queue_oldest_wait_seconds Longest wait.\n\
             # TYPE conveyor_queue_oldest_wait_seconds gauge\n\
             conveyor_queue_oldest_wait_seconds{queue=\"q\"} 0.5\n\
             # HELP conveyor_build_info Build.\n\
             # TYPE conveyor_build_info gauge\n\
             conveyor_build_info{version=\"0.1.0\"} 1\n"
        );
    }

    #[test]
    fn prometheus_asks_for_openmetrics_and_curl_does_not() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text; q=0"
        )));
    }
}

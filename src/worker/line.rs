//! The stdout protocol of `conveyor worker -- CMD`: which lines mean progress, result or a fatal
//! error. Pure, so it is tested here.

use crate::scheduler::Progress;

#[derive(Debug, PartialEq)]
pub enum Line {
    /// `PROGRESS <percent> [stage] [message...]`
    Progress(Progress),
    /// `RESULT <json>`: the last one becomes the job's result.
    Result(String),
    /// `FATAL <message>`: the failure is not worth retrying.
    Fatal(String),
    /// Anything else: the command's own output, shown to the person running the worker.
    Other,
}

pub fn parse(line: &str) -> Line {
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("PROGRESS ") {
        let mut parts = rest.trim_start().splitn(3, ' ');
        let Some(percent) = parts
            .next()
            .and_then(|p| p.trim_end_matches('%').parse::<f32>().ok())
        else {
            return Line::Other;
        };
        if percent.is_nan() {
            return Line::Other;
        }
        return Line::Progress(Progress {
            percent: percent.clamp(0.0, 100.0),
            stage: parts.next().unwrap_or_default().to_string(),
            message: parts.next().unwrap_or_default().trim().to_string(),
        });
    }
    if let Some(json) = line.strip_prefix("RESULT ") {
        return Line::Result(json.trim().to_string());
    }
    if let Some(message) = line.strip_prefix("FATAL ") {
        return Line::Fatal(message.trim().to_string());
    }
    Line::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(percent: f32, stage: &str, message: &str) -> Line {
        Line::Progress(Progress {
            percent,
            stage: stage.into(),
            message: message.into(),
        })
    }

    #[test]
    fn progress_lines() {
        assert_eq!(
            parse("PROGRESS 45 encode frame 450/1000"),
            progress(45.0, "encode", "frame 450/1000")
        );
        assert_eq!(parse("PROGRESS 12.5%"), progress(12.5, "", ""));
        assert_eq!(parse("PROGRESS 7 upload"), progress(7.0, "upload", ""));
        assert_eq!(parse("PROGRESS 150 x"), progress(100.0, "x", ""), "clamped");
        assert_eq!(parse("PROGRESS lots"), Line::Other);
        assert_eq!(parse("PROGRESS NaN"), Line::Other);
        assert_eq!(parse("progress 5"), Line::Other);
    }

    #[test]
    fn result_and_fatal_lines() {
        assert_eq!(
            parse(r#"RESULT {"url":"s3://x"}"#),
            Line::Result(r#"{"url":"s3://x"}"#.into())
        );
        assert_eq!(
            parse("FATAL bad credentials\n"),
            Line::Fatal("bad credentials".into())
        );
        assert_eq!(parse("hello"), Line::Other);
    }
}

//! Progress bars on stderr, shared by the stages.

/// A bar with this indicatif template, hidden unless `enabled` (and hidden by
/// indicatif itself when stderr is not a terminal).
pub fn bar(total: u64, template: &str, enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

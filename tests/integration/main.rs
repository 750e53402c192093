//! Integration tests: the real worker on workerd (`wrangler dev`) against the mock lab backend.
//!
//! A custom harness (`harness = false`): it starts the mock backend and one `wrangler dev`, runs
//! the serial tests (those that read the shared log) one by one, then the rest in parallel (each
//! uses its own lab ids; started 100 ms apart), then those that restart the worker or must run
//! alone, one by one; it stops every process it started, and prints `N passed, M failed`.
//! Arguments that do not start with `-` filter tests by name.

mod api;
mod bounds;
mod budget;
mod bulk;
mod cleanup;
mod cost;
mod deploy;
mod fleet;
mod inventory;
mod ledger;
mod legacy;
mod lifecycle;
mod limits;
mod links;
mod reconcile;
mod rotation;
mod security;
mod stage;
mod support;
mod timeline;
mod webhooks;

use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use support::Ctx;

type TestFn = fn(&Ctx);
type MutTestFn = fn(&mut Ctx);

/// How far apart the parallel tests start.
const STAGGER: std::time::Duration = std::time::Duration::from_millis(100);

/// Tests that read the worker's log as a whole run alone, before the parallel ones.
const SERIAL: &[(&str, TestFn)] = &[
    ("single_vm_example", cleanup::single_vm_example),
    ("multi_node_example", cleanup::multi_node_example),
    (
        "ledger_every_route_logs_its_ledger_line",
        ledger::every_route_logs_its_ledger_line,
    ),
];

/// Tests that restart the worker, or must not share the machine with the parallel wave, run
/// last, one by one.
const LAST: &[(&str, MutTestFn)] = &[
    // Its extends must each reach the lab inside a 2-second window before its expiry: in the
    // parallel wave's first seconds (forty tests and their labs starting on two cores) one
    // answer took longer than that on a CI run and the lab expired between two extends.
    (
        "the_largest_lab_with_the_receiver_down_stays_bounded",
        |ctx| bounds::the_largest_lab_with_the_receiver_down_stays_bounded(ctx),
    ),
    // A worker of its own: started while nothing else starts one.
    ("service_levels_and_metrics", |ctx| {
        fleet::service_levels_and_metrics(ctx)
    }),
    ("rows_written_per_lab_stay_within_their_bounds", |ctx| {
        cost::rows_written_per_lab_stay_within_their_bounds(ctx)
    }),
    ("budget_unreachable_falls_back_to_no_budget", |ctx| {
        budget::budget_unreachable_falls_back_to_no_budget(ctx)
    }),
    (
        "timeline_idle_ends_and_activity",
        timeline::timeline_idle_ends_and_activity,
    ),
    (
        "budget_caps_the_fleet_and_loses_no_permit",
        budget::budget_caps_the_fleet_and_loses_no_permit,
    ),
    (
        "a_chunked_body_is_read_up_to_the_limit",
        bounds::a_chunked_body_is_read_up_to_the_limit,
    ),
    (
        "the_list_filters_and_pages",
        fleet::the_list_filters_and_pages,
    ),
    // From here on completed labs are kept 10 minutes: the inventory's tests look at labs
    // completed more than ORPHAN_CONFIRM_MINUTES (10 s) ago.
    ("inventory_acts_once_after_the_grace", |ctx| {
        // Its finished lab stays in retention while the inventory is reported twice (about
        // 12 s): the fleet's tests set this before it; run alone, it sets it itself.
        ctx.worker.ensure_vars(&[("RETENTION_UNIT_SECONDS", "600")]);
        inventory::inventory_acts_once_after_the_grace(ctx)
    }),
    (
        "the_scheduled_run_pulls_the_inventory_and_revives_a_lab",
        inventory::the_scheduled_run_pulls_the_inventory_and_revives_a_lab,
    ),
    (
        "a_failing_index_loses_nothing_and_is_repaired",
        fleet::a_failing_index_loses_nothing_and_is_repaired,
    ),
    (
        "the_dashboard_in_a_real_browser",
        fleet::the_dashboard_in_a_real_browser,
    ),
    // After the dashboard: their labs would fill the first page it reads.
    ("bulk_actions_over_a_class", bulk::bulk_actions_over_a_class),
    (
        "heartbeats_write_once_per_interval",
        timeline::heartbeats_write_once_per_interval,
    ),
    (
        "paging_ten_thousand_labs_while_adding",
        fleet::paging_ten_thousand_labs_while_adding,
    ),
    // After the dashboard and the list's tests: their labs would fill the first pages.
    ("creates_racing_acting_pushes_never_lose_a_vm", |ctx| {
        reconcile::creates_racing_acting_pushes_never_lose_a_vm(ctx)
    }),
    (
        "the_pull_races_no_create_and_survives_a_hostile_backend",
        reconcile::the_pull_races_no_create_and_survives_a_hostile_backend,
    ),
    (
        "free_plan_enforced_largest_lab_and_a_large_inventory",
        limits::free_plan_enforced_largest_lab_and_a_large_inventory,
    ),
    ("schemathesis_fuzz", security::schemathesis_fuzz),
    (
        "restart_resumes_a_pending_retry",
        cleanup::restart_resumes_a_pending_retry,
    ),
    (
        "grace_stage_a_stopped_lab_down_across_its_delete_at_is_deleted_soon_after_the_restart",
        stage::a_stopped_lab_down_across_its_delete_at_is_deleted_soon_after_the_restart,
    ),
    (
        "webhooks_pending_deliveries_survive_a_restart",
        webhooks::pending_deliveries_survive_a_restart,
    ),
    (
        "webhooks_a_bad_webhook_secret_refuses_the_api_but_not_the_cleanup",
        webhooks::a_bad_webhook_secret_refuses_the_api_but_not_the_cleanup,
    ),
    (
        "retry_after_is_honored_and_overload_defers",
        cleanup::retry_after_is_honored_and_overload_defers,
    ),
    ("backend_down_then_back", security::backend_down_then_back),
    ("dry_run_makes_no_call", security::dry_run_makes_no_call),
    (
        "a_broken_setting_is_not_ready_and_never_echoed",
        security::a_broken_setting_is_not_ready_and_never_echoed,
    ),
    (
        "equal_tokens_are_a_configuration_error",
        security::equal_tokens_are_a_configuration_error,
    ),
    (
        "missing_api_token_fails_closed",
        security::missing_api_token_fails_closed,
    ),
    (
        "rotation_every_secret_without_a_failed_request",
        rotation::rotation_every_secret_without_a_failed_request,
    ),
    (
        "links_more_time_in_one_click",
        links::links_more_time_in_one_click,
    ),
    ("secrets_never_in_output", security::secrets_never_in_output),
];

const PARALLEL: &[(&str, TestFn)] = &[
    (
        "grace_stage_stop_then_delete_at_delete_at",
        stage::stop_then_delete_at_delete_at,
    ),
    (
        "grace_stage_a_resumed_lab_is_started_and_not_deleted_at_the_old_delete_at",
        stage::a_resumed_lab_is_started_and_not_deleted_at_the_old_delete_at,
    ),
    (
        "grace_stage_stops_that_keep_failing_fall_back_to_the_deletion",
        stage::stops_that_keep_failing_fall_back_to_the_deletion,
    ),
    (
        "migrations_upgrade_a_written_database",
        deploy::migrations_upgrade_a_written_database,
    ),
    (
        "inventory_classes_and_the_dry_run",
        inventory::inventory_classes_and_the_dry_run,
    ),
    (
        "inventory_refusals_schedule_nothing",
        inventory::inventory_refusals_schedule_nothing,
    ),
    (
        "a_malformed_cursor_is_a_400_and_stops_no_cleanup",
        bounds::a_malformed_cursor_is_a_400_and_stops_no_cleanup,
    ),
    (
        "worker_nodes_missing_null_or_empty",
        cleanup::worker_nodes_missing_null_or_empty,
    ),
    (
        "failing_worker_is_retried_alone",
        cleanup::failing_worker_is_retried_alone,
    ),
    (
        "services_failure_alone_causes_no_retry",
        cleanup::services_failure_alone_causes_no_retry,
    ),
    (
        "not_found_counts_as_deleted",
        cleanup::not_found_counts_as_deleted,
    ),
    (
        "all_404_is_flagged_as_a_possible_misconfiguration",
        cleanup::all_404_is_flagged_as_a_possible_misconfiguration,
    ),
    (
        "redirects_are_not_followed_and_count_as_failed",
        cleanup::redirects_are_not_followed_and_count_as_failed,
    ),
    (
        "mixed_faults_all_end_deleted",
        cleanup::mixed_faults_all_end_deleted,
    ),
    (
        "bad_inputs_are_rejected_and_store_nothing",
        api::bad_inputs_are_rejected_and_store_nothing,
    ),
    (
        "unknown_paths_and_wrong_methods",
        api::unknown_paths_and_wrong_methods,
    ),
    (
        "repeated_create_is_idempotent",
        api::repeated_create_is_idempotent,
    ),
    (
        "browser_bodies_are_read_as_json_and_repeated_keys_refused",
        api::browser_bodies_are_read_as_json_and_repeated_keys_refused,
    ),
    (
        "deploy_checks_refuse_a_configuration_that_would_not_work",
        deploy::deploy_checks_refuse_a_configuration_that_would_not_work,
    ),
    (
        "legacy_labs_are_adopted_at_cutover",
        legacy::legacy_labs_are_adopted_at_cutover,
    ),
    (
        "legacy_an_acting_inventory_during_the_cutover_deletes_no_legacy_worker_vm",
        legacy::an_acting_inventory_during_the_cutover_deletes_no_legacy_worker_vm,
    ),
    (
        "grace_stage_a_resumed_lab_with_an_idle_timeout_runs_its_whole_timeout_again",
        stage::a_resumed_lab_with_an_idle_timeout_runs_its_whole_timeout_again,
    ),
    (
        "grace_stage_stops_refused_with_429_do_not_use_up_the_grace",
        stage::stops_refused_with_429_do_not_use_up_the_grace,
    ),
    (
        "status_follows_scheduled_retrying_completed",
        lifecycle::status_follows_scheduled_retrying_completed,
    ),
    (
        "end_now_cleans_up_at_once",
        lifecycle::end_now_cleans_up_at_once,
    ),
    (
        "extend_moves_the_expiry",
        lifecycle::extend_moves_the_expiry,
    ),
    (
        "extend_is_refused_when_it_must_be",
        lifecycle::extend_is_refused_when_it_must_be,
    ),
    (
        "get_unknown_creates_nothing",
        lifecycle::get_unknown_creates_nothing,
    ),
    (
        "hostile_inputs_are_refused",
        security::hostile_inputs_are_refused,
    ),
    (
        "api_requires_the_bearer_token",
        security::api_requires_the_bearer_token,
    ),
    (
        "retention_forgets_completed_sessions",
        lifecycle::retention_forgets_completed_sessions,
    ),
    (
        "concurrent_requests_stay_consistent",
        lifecycle::concurrent_requests_stay_consistent,
    ),
    (
        "the_index_row_follows_every_change",
        fleet::the_index_row_follows_every_change,
    ),
    (
        "webhooks_expiring_then_completed",
        webhooks::expiring_then_completed,
    ),
    (
        "webhooks_an_extend_warns_again",
        webhooks::an_extend_warns_again,
    ),
    (
        "webhooks_stuck_then_completed",
        webhooks::stuck_then_completed,
    ),
    (
        "webhooks_redelivered_with_the_same_id",
        webhooks::redelivered_with_the_same_id,
    ),
    (
        "webhooks_a_silent_receiver_does_not_slow_the_cleanup",
        webhooks::a_silent_receiver_does_not_slow_the_cleanup,
    ),
    (
        "stats_summarize_the_fleet",
        fleet::stats_summarize_the_fleet,
    ),
    ("retry_now_in_each_state", fleet::retry_now_in_each_state),
    (
        "typos_are_refused_and_change_nothing",
        reconcile::typos_are_refused_and_change_nothing,
    ),
    ("the_timeline_pages", reconcile::the_timeline_pages),
    (
        "the_fleet_routes_need_the_operator_token",
        fleet::the_fleet_routes_need_the_operator_token,
    ),
];

fn run_one(name: &str, test: impl FnOnce()) -> bool {
    let started = Instant::now();
    let ok = panic::catch_unwind(AssertUnwindSafe(test)).is_ok();
    println!(
        "test {name} ... {} ({:.1} s)",
        if ok { "ok" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    ok
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let serial: Vec<_> = SERIAL.iter().filter(|(n, _)| wanted(n)).collect();
    let parallel: Vec<_> = PARALLEL.iter().filter(|(n, _)| wanted(n)).collect();
    let last: Vec<_> = LAST.iter().filter(|(n, _)| wanted(n)).collect();
    let total = serial.len() + parallel.len() + last.len();
    if total == 0 {
        println!("integration: 0 passed, 0 failed (no test matches {filters:?})");
        return;
    }

    println!("running {total} integration tests on wrangler dev");
    let mut ctx = Ctx::start();
    let mut failed: Vec<&str> = Vec::new();
    for (name, test) in serial {
        if !run_one(name, || test(&ctx)) {
            failed.push(name);
        }
    }
    let shared = &ctx;
    let results: Vec<(&str, bool)> = std::thread::scope(|scope| {
        // Started 100 ms apart rather than all at once: forty tests' first requests together on
        // two cores made single answers take over a second and a half on a CI run.
        let handles: Vec<_> = parallel
            .iter()
            .enumerate()
            .map(|(n, (name, test))| {
                let start = STAGGER * n as u32;
                (
                    *name,
                    scope.spawn(move || {
                        std::thread::sleep(start);
                        run_one(name, || test(shared))
                    }),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| (name, h.join().unwrap_or(false)))
            .collect()
    });
    failed.extend(results.iter().filter(|(_, ok)| !ok).map(|(name, _)| *name));
    for (name, test) in last {
        if !run_one(name, || test(&mut ctx)) {
            failed.push(name);
        }
    }

    if !failed.is_empty() {
        println!(
            "\nworker log tail ({}):\n{}",
            ctx.worker.log_path.display(),
            support::tail(&ctx.worker.log(), 80)
        );
    }
    let work_dir = ctx.work_dir.clone();
    drop(ctx);
    if failed.is_empty() {
        let _ = std::fs::remove_dir_all(&work_dir);
    } else {
        println!("\nfailed: {}", failed.join(", "));
    }
    println!(
        "\nintegration: {} passed, {} failed",
        total - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

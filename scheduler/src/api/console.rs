//! The web console (`/console`, on the HTTP API's port, behind its tokens): the hosts with
//! their traffic and health, the tasks with their holders and progress, a task's provenance
//! (which host got which bytes from where), the preheat jobs. Pages are rendered here, with no
//! JavaScript; every value from the network is escaped. A browser signs in with a personal
//! access token once (`/console/login`), kept in an HttpOnly, SameSite=Strict cookie.

use std::collections::BTreeMap;
use std::fmt::Write as _;

mod html;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State as Ctx};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use shoal_p2p::BySource;

use super::Api;
use crate::state;
use html::{
    add, ago, bytes_cell, esc, human, p2p_ratio, page, percent, redacted, short, source_cells,
};

/// The cookie a signed-in browser sends.
const COOKIE: &str = "shoal_console";
/// Tasks listed at most (the most recently active first).
const MAX_TASKS: usize = 200;

pub(super) fn routes(api: Arc<Api>) -> Router<Arc<Api>> {
    use axum::routing::{get, post};
    let pages = Router::new()
        .route("/console", get(hosts))
        .route("/console/tasks", get(tasks))
        .route("/console/tasks/{id}", get(task))
        .route("/console/jobs", get(jobs))
        .layer(axum::middleware::from_fn_with_state(api, signed_in));
    Router::new()
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .merge(pages)
}

/// The token a browser's cookie carries.
fn cookie_token(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(str::to_owned)
}

/// Lets a page through with a valid token (the cookie, or as the API takes it); else to the
/// sign-in page.
async fn signed_in(Ctx(api): Ctx<Arc<Api>>, req: Request, next: Next) -> Response {
    let token = cookie_token(&req).or_else(|| super::token_of(req.headers(), req.uri().query()));
    let valid = match token {
        Some(t) => api.check_token(t).await.is_some(),
        None => false,
    };
    match valid {
        true => next.run(req).await,
        false => Redirect::to("/console/login").into_response(),
    }
}

async fn login_form() -> Html<String> {
    sign_in_page("")
}

fn sign_in_page(problem: &str) -> Html<String> {
    let mut body = String::from("<h1>Sign in</h1>");
    if !problem.is_empty() {
        let _ = write!(body, "<p class=\"problem\">{}</p>", esc(problem));
    }
    body.push_str(
        "<form method=\"post\" action=\"/console/login\">\
         <label>Personal access token (<code>shoal token create NAME</code> on the scheduler) \
         <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" required></label>\
         <button type=\"submit\" id=\"sign-in\">Sign in</button></form>",
    );
    page("Sign in", "", &body, false)
}

async fn login(Ctx(api): Ctx<Arc<Api>>, body: String) -> Response {
    let token = url::form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    if token.is_empty() || api.check_token(token.clone()).await.is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            sign_in_page("That token is not valid."),
        )
            .into_response();
    }
    let cookie = format!("{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/console")).into_response()
}

async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
    (
        [(header::SET_COOKIE, cookie)],
        Redirect::to("/console/login"),
    )
        .into_response()
}

/// A host as the hosts page shows it.
struct HostRow {
    id: String,
    addr: String,
    seed: bool,
    labels: String,
    slots: u32,
    tasks: usize,
    attached: bool,
    traffic: Option<(BySource, u64, Duration)>,
}

async fn hosts(Ctx(api): Ctx<Arc<Api>>) -> Html<String> {
    let mut rows: BTreeMap<String, HostRow> = {
        let s = state::lock(&api.state);
        s.hosts
            .values()
            .map(|a| {
                let h = &a.host;
                let mut labels: Vec<String> =
                    h.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                let row = HostRow {
                    id: h.id.clone(),
                    addr: h.upload_addr.clone(),
                    seed: h.seed,
                    labels: labels.join(", "),
                    slots: h.upload_slots,
                    tasks: s.task_count(&h.id),
                    attached: true,
                    traffic: None,
                };
                (h.id.clone(), row)
            })
            .collect()
    };
    for (id, t) in api.traffic.hosts() {
        let row = rows.entry(id.clone()).or_insert_with(|| HostRow {
            id,
            addr: String::new(),
            seed: false,
            labels: String::new(),
            slots: 0,
            tasks: 0,
            attached: false,
            traffic: None,
        });
        row.traffic = Some((t.received, t.sent, t.at.elapsed()));
    }
    let mut total = BySource::default();
    let mut sent = 0;
    let mut body = String::from(
        "<h1>Hosts</h1><table id=\"hosts\"><thead><tr><th>host</th><th>role</th><th>pieces served on</th>\
         <th>labels</th><th>health</th><th>tasks</th><th>from origin</th><th>from peers</th>\
         <th>from seeds</th><th>from cache</th><th>sent to peers</th></tr></thead><tbody>",
    );
    for r in rows.values() {
        let (by, up, health) = match &r.traffic {
            Some((by, up, age)) => (*by, *up, format!("traffic told {} ago", ago(*age))),
            None => (BySource::default(), 0, "no traffic told yet".into()),
        };
        let health = match r.attached {
            true => format!("attached, {health}"),
            false => format!("detached, {health}"),
        };
        add(&mut total, &by);
        sent = up.saturating_add(sent);
        let _ = write!(
            body,
            "<tr data-host=\"{id}\" class=\"{class}\"><td><b>{id}</b></td><td>{role}</td><td>{addr}</td>\
             <td>{labels}</td><td>{health}</td><td>{tasks}</td>{cells}{up}</tr>",
            id = esc(&r.id),
            class = if r.attached { "up" } else { "down" },
            role = if r.seed { "seed" } else { "node" },
            addr = match r.slots {
                0 => esc(&r.addr),
                n => format!("{} ({n} slots)", esc(&r.addr)),
            },
            labels = esc(&r.labels),
            health = esc(&health),
            tasks = r.tasks,
            cells = source_cells(&by),
            up = bytes_cell("sent", up),
        );
    }
    let _ = write!(
        body,
        "</tbody><tfoot><tr data-host=\"\"><td colspan=\"6\">hosts: {}, P2P ratio {}</td>{}{}</tr></tfoot></table>",
        rows.len(),
        p2p_ratio(&total),
        source_cells(&total),
        bytes_cell("sent", sent)
    );
    body.push_str(
        "<p class=\"note\">Bytes each host received by where they came from, as its <code>shoal status</code> \
         counts them; P2P ratio: bytes from peers and seeds over all bytes not from a cache.</p>",
    );
    page("Hosts", "hosts", &body, true)
}

async fn tasks(Ctx(api): Ctx<Arc<Api>>) -> Html<String> {
    let mut body = String::from(
        "<h1>Tasks</h1><table id=\"tasks\"><thead><tr><th>task</th><th>content</th><th>size</th>\
         <th>pieces</th><th>holders</th><th>complete on</th><th>progress</th><th>from the origin</th>\
         </tr></thead><tbody>",
    );
    {
        let s = state::lock(&api.state);
        let mut all: Vec<_> = s.tasks.iter().collect();
        all.sort_by_key(|(_, t)| std::cmp::Reverse(t.last_active));
        for (id, t) in all.into_iter().take(MAX_TASKS) {
            let pieces = t.piece_count();
            let complete = t.holders.values().filter(|h| h.bitmap.is_full()).count();
            let held: u64 = t
                .holders
                .values()
                .map(|h| u64::from(h.bitmap.count()))
                .sum();
            let progress = percent(held, u64::from(pieces) * t.holders.len() as u64);
            let fetcher = match (&t.fetcher, t.recent_failure()) {
                (_, Some(f)) => format!("failed: {}", f.message),
                (Some(f), None) => f.clone(),
                (None, None) => "-".into(),
            };
            let _ = write!(
                body,
                "<tr data-task=\"{eid}\"><td><a href=\"/console/tasks/{href}\">{short}</a></td><td class=\"url\">{url}</td>\
                 <td>{size}</td><td>{pieces}</td><td>{holders}</td><td>{complete}</td><td>{progress}</td>\
                 <td>{fetcher}</td></tr>",
                eid = esc(id),
                href =
                    esc(&url::form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()),
                short = esc(&short(id)),
                url = esc(&redacted(&t.task.url)),
                size = t.length.map_or("?".into(), human),
                holders = t.holders.len(),
                fetcher = esc(&fetcher),
            );
        }
    }
    body.push_str("</tbody></table>");
    page("Tasks", "tasks", &body, true)
}

async fn task(Ctx(api): Ctx<Arc<Api>>, Path(id): Path<String>) -> Response {
    // Each holder: (pieces held, complete).
    let (length, pieces, url, holders) = {
        let s = state::lock(&api.state);
        let Some(t) = s.tasks.get(&id) else {
            let body = format!(
                "<h1>No task {}</h1><p>It may have ended: tasks idle long are forgotten.</p>",
                esc(&id)
            );
            return (
                StatusCode::NOT_FOUND,
                page("No such task", "tasks", &body, false),
            )
                .into_response();
        };
        let holders: BTreeMap<String, (u32, bool)> = t
            .holders
            .iter()
            .map(|(h, x)| (h.clone(), (x.bitmap.count(), x.bitmap.is_full())))
            .collect();
        (t.length, t.piece_count(), redacted(&t.task.url), holders)
    };
    let told = api.traffic.hosts();
    let mut body = format!(
        "<h1>Task {}</h1><p class=\"url\">{}</p><p>{} in {pieces} pieces</p>\
         <h2>Where each host's bytes came from</h2><table id=\"provenance\"><thead><tr><th>host</th>\
         <th>pieces</th><th>from origin</th><th>from peers</th><th>from seeds</th><th>from cache</th>\
         </tr></thead><tbody>",
        esc(&short(&id)),
        esc(&url),
        length.map_or("size not known yet".into(), human),
    );
    let mut total = BySource::default();
    for (host, (held, complete)) in &holders {
        let by = told
            .get(host)
            .and_then(|t| t.tasks.iter().find(|(tid, ..)| *tid == id))
            .map(|(_, _, by)| *by);
        let state = match complete {
            true => "complete".into(),
            false => format!(
                "{held} of {pieces} ({})",
                percent(u64::from(*held), u64::from(pieces))
            ),
        };
        let cells = match by {
            Some(by) => {
                add(&mut total, &by);
                source_cells(&by)
            }
            None => "<td colspan=\"4\">not told yet</td>".into(),
        };
        let _ = write!(
            body,
            "<tr data-host=\"{h}\"><td>{h}</td><td>{state}</td>{cells}</tr>",
            h = esc(host),
        );
    }
    let copies = match length {
        Some(len) if len > 0 => format!("{:.2}", total.origin as f64 / len as f64),
        _ => "?".into(),
    };
    let _ = write!(
        body,
        "</tbody><tfoot><tr data-host=\"\"><td colspan=\"2\">hosts: {}; the origin sent {copies} copies; P2P ratio {}</td>{}</tr></tfoot></table>",
        holders.len(),
        p2p_ratio(&total),
        source_cells(&total)
    );
    page("Task", "tasks", &body, true).into_response()
}

async fn jobs(Ctx(api): Ctx<Arc<Api>>) -> Html<String> {
    let jobs = tokio::task::spawn_blocking(move || api.jobs.list(100))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let mut body = String::from(
        "<h1>Preheat jobs</h1><table id=\"jobs\"><thead><tr><th>job</th><th>state</th><th>image</th>\
         <th>scope</th><th>asked by</th><th>blobs</th><th>bytes</th><th>started</th><th>error</th>\
         </tr></thead><tbody>",
    );
    for j in &jobs {
        let done = j.blobs.iter().filter(|b| b.done).count();
        let bytes: u64 = j.blobs.iter().filter(|b| b.done).map(|b| b.size).sum();
        let started = std::time::UNIX_EPOCH + Duration::from_secs(j.created_at);
        let _ = write!(
            body,
            "<tr data-job=\"{id}\"><td>{id}</td><td>{state:?}</td><td>{url}</td><td>{scope}</td>\
             <td>{via}</td><td>{done} of {blobs}</td><td>{bytes}</td><td>{started}</td><td>{error}</td></tr>",
            id = j.id,
            state = j.state,
            url = esc(&redacted(&j.url)),
            scope = esc(&j.scope.to_string()),
            via = esc(&j.via),
            blobs = j.blobs.len(),
            bytes = human(bytes),
            started = humantime::format_rfc3339_seconds(started),
            error = esc(&j.error),
        );
    }
    body.push_str("</tbody></table>");
    page("Preheat jobs", "jobs", &body, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_gives_the_token() {
        let req = Request::builder()
            .header(header::COOKIE, "a=b; shoal_console=tok123; c=d")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(cookie_token(&req).as_deref(), Some("tok123"));
        let none = Request::builder().body(axum::body::Body::empty()).unwrap();
        assert_eq!(cookie_token(&none), None);
    }
}

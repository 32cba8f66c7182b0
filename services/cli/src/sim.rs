//! `finestra sim …`: the simulator's control API: registers numbers with the network (as a
//! partner configures its app at Meta), reviews templates there, and plays the users.

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Value, json};

#[derive(Subcommand)]
pub enum SimCommand {
    /// Registers a number with the network: its business account, the app secret that signs
    /// its webhooks, the token senders present, its throughput.
    RegisterNumber {
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        waba_id: String,
        #[arg(long, default_value = "")]
        display: String,
        #[arg(long)]
        app_secret: String,
        /// Default: the simulator's own (SIM_ACCESS_TOKEN).
        #[arg(long)]
        access_token: Option<String>,
        /// Messages a second (default: the simulator's SIM_NUMBER_RATE).
        #[arg(long)]
        throughput: Option<u32>,
    },
    /// The network says something of an account's health (a signed webhook to ingest):
    /// `--kind number_quality --phone-number-id N --event FLAGGED|UNFLAGGED|UPGRADE|DOWNGRADE
    /// [--current-limit TIER_2K]`, `--kind capability --waba-id W --current-limit TIER_10K`,
    /// `--kind account --waba-id W --event ACCOUNT_VIOLATION`, `--kind template_quality
    /// --template-id T --quality YELLOW`.
    Health {
        #[arg(long)]
        kind: String,
        #[arg(long, default_value = "")]
        phone_number_id: String,
        #[arg(long, default_value = "")]
        waba_id: String,
        #[arg(long, default_value = "")]
        event: String,
        #[arg(long, default_value = "")]
        current_limit: String,
        #[arg(long, default_value = "")]
        old_limit: String,
        #[arg(long, default_value = "")]
        template_id: String,
        #[arg(long, default_value = "")]
        quality: String,
    },
    /// The network reviews a template now: APPROVED, REJECTED, PAUSED, REINSTATED, DISABLED,
    /// FLAGGED.
    ReviewTemplate {
        #[arg(long)]
        waba_id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        language: String,
        #[arg(long)]
        event: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// A user writes to a number (the simulator posts the signed webhook to ingest).
    UserSays {
        #[arg(long)]
        phone_number_id: String,
        /// The user's wa_id.
        #[arg(long)]
        from: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long)]
        text: String,
        /// The message was sent this many seconds ago.
        #[arg(long, default_value_t = 0)]
        seconds_ago: i64,
        /// The user came from this ad (starts a free entry point if the business replies).
        #[arg(long)]
        referral_source_id: Option<String>,
        /// Send media instead (image, document, audio, video, sticker; the text is its caption).
        #[arg(long)]
        media: Option<String>,
    },
    /// A user blocks a number.
    Block {
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        user: String,
    },
    /// A user stops marketing messages from a number (a `user_preferences` webhook).
    StopMarketing {
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        user: String,
    },
    /// A user resumes marketing messages from a number.
    ResumeMarketing {
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        user: String,
    },
    /// A user unblocks a number.
    Unblock {
        #[arg(long)]
        phone_number_id: String,
        #[arg(long)]
        user: String,
    },
}

async fn post(base: &str, path: &str, body: Value) -> anyhow::Result<Value> {
    let url = format!("{}/sim/v1/{path}", base.trim_end_matches('/'));
    let response = reqwest::Client::new()
        .post(&url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("posting to {url}"))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(
        status.is_success(),
        "the simulator answered {status}: {answer}"
    );
    Ok(answer)
}

pub async fn run(base: &str, command: SimCommand) -> anyhow::Result<()> {
    match command {
        SimCommand::RegisterNumber {
            phone_number_id,
            waba_id,
            display,
            app_secret,
            access_token,
            throughput,
        } => {
            let answer = post(
                base,
                "numbers",
                json!({"phone_number_id": phone_number_id, "waba_id": waba_id,
                       "display_phone_number": display, "app_secret": app_secret,
                       "access_token": access_token, "throughput_per_second": throughput}),
            )
            .await?;
            println!(
                "{phone_number_id} registered with the network under business account {waba_id} ({} msg/s)",
                answer["throughput_per_second"]
            );
        }
        SimCommand::Health {
            kind,
            phone_number_id,
            waba_id,
            event,
            current_limit,
            old_limit,
            template_id,
            quality,
        } => {
            post(
                base,
                "health",
                json!({"kind": kind, "phone_number_id": phone_number_id, "waba_id": waba_id,
                       "event": event, "current_limit": current_limit, "old_limit": old_limit,
                       "template_id": template_id, "quality": quality}),
            )
            .await?;
            let said: Vec<&str> = [event.as_str(), current_limit.as_str(), quality.as_str()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect();
            println!("the network told Finestra: {kind} {}", said.join(" "));
        }
        SimCommand::ReviewTemplate {
            waba_id,
            name,
            language,
            event,
            reason,
        } => {
            let answer = post(
                base,
                "template",
                json!({"waba_id": waba_id, "name": name, "language": language,
                       "event": event, "reason": reason}),
            )
            .await?;
            println!(
                "the network reviewed {name} ({language}): {}",
                answer["status"].as_str().unwrap_or_default()
            );
        }
        SimCommand::UserSays {
            phone_number_id,
            from,
            name,
            text,
            seconds_ago,
            referral_source_id,
            media,
        } => {
            let answer = post(
                base,
                "say",
                json!({"phone_number_id": phone_number_id, "from": from, "name": name,
                       "text": text, "seconds_ago": seconds_ago,
                       "referral_source_id": referral_source_id, "media": media}),
            )
            .await?;
            println!(
                "{from} wrote to {phone_number_id}: {} ({}s ago)",
                answer["wamid"].as_str().unwrap_or_default(),
                seconds_ago
            );
        }
        SimCommand::Block {
            phone_number_id,
            user,
        } => {
            post(
                base,
                "block",
                json!({"phone_number_id": phone_number_id, "user": user, "blocked": true}),
            )
            .await?;
            println!("{user} blocked {phone_number_id}");
        }
        SimCommand::StopMarketing {
            phone_number_id,
            user,
        } => {
            post(
                base,
                "preference",
                json!({"phone_number_id": phone_number_id, "user": user, "stop": true}),
            )
            .await?;
            println!("{user} stopped marketing messages from {phone_number_id}");
        }
        SimCommand::ResumeMarketing {
            phone_number_id,
            user,
        } => {
            post(
                base,
                "preference",
                json!({"phone_number_id": phone_number_id, "user": user, "stop": false}),
            )
            .await?;
            println!("{user} resumed marketing messages from {phone_number_id}");
        }
        SimCommand::Unblock {
            phone_number_id,
            user,
        } => {
            post(
                base,
                "block",
                json!({"phone_number_id": phone_number_id, "user": user, "blocked": false}),
            )
            .await?;
            println!("{user} unblocked {phone_number_id}");
        }
    }
    Ok(())
}

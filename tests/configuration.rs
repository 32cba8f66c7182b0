//! docs/configuration.md is the reference of every `FINESTRA_*` variable, and it is made from
//! the services' own declarations (`finestra_platform::settings!`), so a default lives in one
//! place. This test fails when the page and the code disagree; `make docs-config` rewrites it.

use finestra_platform::config::{
    KafkaSettings, LogSettings, Setting, SharedSettings, markdown_rows,
};

const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");

fn section(title: &str, intro: &str, settings: &[&[Setting]]) -> String {
    let all: Vec<Setting> = settings.iter().flat_map(|s| s.iter().copied()).collect();
    format!("## {title}\n\n{intro}\n\n{}\n", markdown_rows(&all))
}

fn reference() -> String {
    let mut page = String::from(
        "# Configuration\n\n\
         Every Finestra binary reads its settings from `FINESTRA_*` environment variables at \
         start-up; an unset or blank variable takes its default, and a value that does not \
         parse stops the binary with the variable's name. The defaults suit one machine running \
         `make up`. A duration's unit is in its variable's name (`_MS`, `_SECS`, `_HOURS`).\n\n\
         This page is generated from the declarations in the code (`make docs-config`); a test \
         fails when the two differ.\n\n",
    );
    page.push_str(&section(
        "Every service",
        "Read by accounts, ingest, window, billing, dispatch and the gateway (the simulator reads \
         `FINESTRA_DATABASE_URL` and the logging settings).",
        &[
            SharedSettings::SETTINGS,
            LogSettings::SETTINGS,
            KafkaSettings::SETTINGS,
        ],
    ));
    page.push_str(&section(
        "finestra-accounts",
        "Partners, tenants, numbers, API keys and templates.",
        &[finestra_accounts::AccountsConfig::SETTINGS],
    ));
    page.push_str(&section(
        "finestra-ingest",
        "The provider's webhooks and `IngestInbound`.",
        &[finestra_ingest::IngestConfig::SETTINGS],
    ));
    page.push_str(&section(
        "finestra-window",
        "Customer-service windows and blocks.",
        &[finestra_window::WindowConfig::SETTINGS],
    ));
    page.push_str(&section(
        "finestra-billing",
        "Rate cards, wallets, reservations and the ledger.",
        &[finestra_billing::BillingConfig::SETTINGS],
    ));
    page.push_str(&section(
        "finestra-dispatch",
        "SendMessage, the delivery worker, statuses and tenant events.",
        &[finestra_dispatch::DispatchConfig::SETTINGS],
    ));
    page.push_str(&section(
        "finestra-gateway",
        "The Cloud API's HTTP surface over dispatch and accounts (docs/gateway.md).",
        &[finestra_gateway::GatewayConfig::SETTINGS],
    ));
    page.push_str(&section(
        "finestra-simulator",
        "The development network (Cloud API and its webhooks).",
        &[finestra_simulator::SimConfig::SETTINGS],
    ));
    page
}

#[test]
fn the_configuration_reference_matches_the_declared_settings() {
    let expected = reference();
    if std::env::var_os("FINESTRA_WRITE_DOCS").is_some() {
        std::fs::write(PAGE, &expected).expect("writing docs/configuration.md");
        return;
    }
    let actual = std::fs::read_to_string(PAGE).unwrap_or_default();
    assert!(
        actual == expected,
        "docs/configuration.md is out of date with the settings the services declare; \
         run `make docs-config` and commit it"
    );
}

#[test]
fn every_declared_default_parses() {
    use finestra_platform::config::Lookup;
    let unset: Lookup<'_> = &|_| None;
    finestra_accounts::AccountsConfig::from_lookup(unset).expect("accounts defaults");
    finestra_ingest::IngestConfig::from_lookup(unset).expect("ingest defaults");
    finestra_window::WindowConfig::from_lookup(unset).expect("window defaults");
    finestra_billing::BillingConfig::from_lookup(unset).expect("billing defaults");
    finestra_dispatch::DispatchConfig::from_lookup(unset).expect("dispatch defaults");
    finestra_gateway::GatewayConfig::from_lookup(unset).expect("gateway defaults");
    finestra_simulator::SimConfig::from_lookup(unset).expect("simulator defaults");
    SharedSettings::from_lookup(unset).expect("shared defaults");
    LogSettings::from_lookup(unset).expect("log defaults");
    KafkaSettings::from_lookup(unset).expect("kafka defaults");
}

#[test]
fn a_variable_is_declared_once_per_binary() {
    let services: [(&str, &[Setting]); 7] = [
        ("accounts", finestra_accounts::AccountsConfig::SETTINGS),
        ("ingest", finestra_ingest::IngestConfig::SETTINGS),
        ("window", finestra_window::WindowConfig::SETTINGS),
        ("billing", finestra_billing::BillingConfig::SETTINGS),
        ("dispatch", finestra_dispatch::DispatchConfig::SETTINGS),
        ("gateway", finestra_gateway::GatewayConfig::SETTINGS),
        ("simulator", finestra_simulator::SimConfig::SETTINGS),
    ];
    for (name, own) in services {
        let mut vars: Vec<&str> = own.iter().map(|s| s.var).collect();
        if name != "simulator" {
            vars.extend(SharedSettings::SETTINGS.iter().map(|s| s.var));
        }
        let count = vars.len();
        vars.sort_unstable();
        vars.dedup();
        assert_eq!(vars.len(), count, "{name} declares a variable twice");
    }
}

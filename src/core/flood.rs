//! The kinds of HTTP/2 control-frame flood the gateway limits.

/// The frame kinds that are limited, also the `kind` label of `certgate_h2_abuse_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FloodKind {
    Settings = 1,
    Ping = 2,
    Priority = 3,
    WindowUpdate = 4,
    EmptyData = 5,
}

impl FloodKind {
    pub const ALL: [FloodKind; 5] = [
        FloodKind::Settings,
        FloodKind::Ping,
        FloodKind::Priority,
        FloodKind::WindowUpdate,
        FloodKind::EmptyData,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FloodKind::Settings => "settings",
            FloodKind::Ping => "ping",
            FloodKind::Priority => "priority",
            FloodKind::WindowUpdate => "window_update",
            FloodKind::EmptyData => "empty_data",
        }
    }

    pub fn from_u8(v: u8) -> Option<FloodKind> {
        FloodKind::ALL.into_iter().find(|k| *k as u8 == v)
    }
}

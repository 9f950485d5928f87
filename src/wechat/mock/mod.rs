//! The project's WeChat API emulator (being written).

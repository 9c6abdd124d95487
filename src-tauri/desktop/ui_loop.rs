//! The tray app's main-thread event loop: GTK's on Linux (what the AppIndicator tray
//! and its menu live on), tao's elsewhere (what tray-icon needs on macOS and Windows;
//! not built or tested here: no Mac or Windows machine).
//!
//! The tray app links no web view: this loop only carries the tray icon and its menu.
//! Everything else runs on the tokio runtime; [`invoke`] hands work to this thread.

#[cfg(target_os = "linux")]
mod imp {
    /// Open the display on this (the main) thread. A display that refuses the first
    /// connection (an app started at login while the session is still coming up, a
    /// busy X server) gets a few more tries over about ten seconds.
    pub fn init() -> bool {
        for attempt in 0..20 {
            match gtk::init() {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "cannot open the display yet; trying again");
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            }
        }
        false
    }

    /// Run `setup` on this thread, then the loop until [`quit`].
    pub fn run(setup: impl FnOnce() + 'static) {
        setup();
        gtk::main();
    }

    pub fn invoke(f: impl FnOnce() + Send + 'static) {
        gtk::glib::MainContext::default().invoke(f);
    }

    pub fn quit() {
        invoke(gtk::main_quit);
    }

    pub fn quit_when(until: impl std::future::Future<Output = ()> + Send + 'static) {
        // Polled by the loop on this thread: a quit never runs before the loop does,
        // nor on another thread.
        gtk::glib::MainContext::default().spawn_local(async move {
            until.await;
            gtk::main_quit();
        });
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::sync::{Mutex, OnceLock};
    use tao::event::{Event, StartCause};
    use tao::event_loop::{ControlFlow, EventLoopBuilder, EventLoopProxy};
    use tao::platform::run_return::EventLoopExtRunReturn;

    pub enum Job {
        Run(Box<dyn FnOnce() + Send>),
        Quit,
    }

    static PROXY: OnceLock<Mutex<EventLoopProxy<Job>>> = OnceLock::new();

    pub fn init() -> bool {
        true
    }

    /// Run `setup` once the loop started (macOS wants the tray made then), then the
    /// loop until [`quit`].
    pub fn run(setup: impl FnOnce() + 'static) {
        let mut event_loop = EventLoopBuilder::<Job>::with_user_event().build();
        // A tray app: no Dock icon (the window's process is an ordinary app).
        #[cfg(target_os = "macos")]
        {
            use tao::platform::macos::{ActivationPolicy, EventLoopExtMacOS};
            event_loop.set_activation_policy(ActivationPolicy::Accessory);
        }
        let _ = PROXY.set(Mutex::new(event_loop.create_proxy()));
        let mut setup = Some(setup);
        event_loop.run_return(move |event, _, flow| {
            *flow = ControlFlow::Wait;
            match event {
                Event::NewEvents(StartCause::Init) => {
                    if let Some(s) = setup.take() {
                        s();
                    }
                }
                Event::UserEvent(Job::Run(f)) => f(),
                Event::UserEvent(Job::Quit) => *flow = ControlFlow::Exit,
                _ => {}
            }
        });
    }

    fn send(job: Job) {
        if let Some(p) = PROXY.get() {
            let _ = p.lock().unwrap_or_else(|e| e.into_inner()).send_event(job);
        }
    }

    pub fn invoke(f: impl FnOnce() + Send + 'static) {
        send(Job::Run(Box::new(f)));
    }

    pub fn quit() {
        send(Job::Quit);
    }

    pub fn quit_when(until: impl std::future::Future<Output = ()> + Send + 'static) {
        std::thread::spawn(move || {
            futures::executor::block_on(until);
            quit();
        });
    }
}

/// Open the display (false: it cannot be opened; the app runs without a tray).
pub fn init() -> bool {
    imp::init()
}

/// Run `setup` on this thread, then the loop, until [`quit`] is called.
pub fn run(setup: impl FnOnce() + 'static) {
    imp::run(setup)
}

/// Run `f` on the loop's thread (from any thread).
pub fn invoke(f: impl FnOnce() + Send + 'static) {
    imp::invoke(f)
}

/// End [`run`] (from any thread).
pub fn quit() {
    imp::quit()
}

/// End [`run`] once `until` completes (also when it has already): call it in `run`'s
/// setup, on the loop's thread.
pub fn quit_when(until: impl std::future::Future<Output = ()> + Send + 'static) {
    imp::quit_when(until)
}
